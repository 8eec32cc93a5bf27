# The compiled build's declarations for dataplane/protocols/settings.py (setup.py): a listener
# generation and its routes become extension types, so the exchange reads each setting as a C
# field instead of looking it up by name on every request. Every name in each __slots__ is
# declared here (tests/dataplane/test_compiled_modules.py keeps the lists equal). The .py stays
# the source.
from dataplane.balancing cimport Scheduler
from dataplane.stats cimport ListenerStats
from dataplane.upstream cimport UpstreamPool


cdef class Route:
    cdef public object backend_context
    cdef public dict backends_by_token
    cdef public object group
    cdef public object in_maintenance
    cdef public object outlier
    cdef public Scheduler scheduler
    cdef public object server_group_id


cdef class ListenerSettings:
    cdef public object acl
    cdef public object allow_brotli
    cdef public object alt_svc
    cdef public object bucket
    cdef public object client_ip
    cdef public object clientcert
    cdef public object compress
    cdef public object cookie_persistence
    cdef public frozenset drop_headers
    cdef public object error_pages
    cdef public object group
    cdef public object grpc
    cdef public object http2
    cdef public object idle_timeout
    cdef public object listener
    cdef public UpstreamPool pool
    cdef public object proxy_header
    cdef public object request_timeout
    cdef public object response_timeout
    cdef public object retries
    cdef public object retry_budget
    cdef public Route route
    cdef public dict routes
    cdef public object rules
    cdef public object scheme
    cdef public object source_persistence
    cdef public object srcport
    cdef public object static_fields
    cdef public bytes static_headers
    cdef public ListenerStats stats
    cdef public object throttle
    cdef public object tls
    cdef public object x_forwarded_host
    cdef public object xff_mode
