# The compiled build's declarations for dataplane/stats.py (setup.py): a listener's counters and
# histograms become extension types, so the proxy's per-request counting is a C field access and
# a list append, not three attribute lookups. Every name in each __slots__ is declared here
# (tests/dataplane/test_compiled_modules.py keeps the lists equal). The .py stays the source.
cimport cython


cdef class Histogram:
    cdef public list counts
    cdef public list pending
    cdef public object sum


cdef class ListenerStats:
    cdef public object active_connections
    cdef public Histogram backend_response_time
    cdef public object bytes_in
    cdef public object bytes_out
    cdef public object denied_connections
    cdef public Histogram request_duration
    cdef public object requests
    cdef public list responses
    cdef public object retries
    cdef public object retries_refused
    cdef public object retry_budget
    cdef public object throttled_by_rule
    cdef public object throttled_requests
    cdef public object tls_failures
    cdef public object tls_handshakes
    cdef public object total_connections
