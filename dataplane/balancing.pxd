# The compiled build's declarations for dataplane/balancing.py (setup.py): a server's runtime state
# and the schedulers become extension types, so a pick reads each server's weight and health as C
# fields. Every name in each __slots__ is declared here (tests/dataplane/test_compiled_modules.py
# keeps the lists equal). The .py stays the source.
cimport cython


cdef class Backend:
    cdef public object active
    cdef public object address
    cdef public object checked_healthy
    cdef public object connect_failures
    cdef public object drain_deadline
    cdef public object ejected
    cdef public object health_reason
    cdef public object healthy
    cdef public object id
    cdef public object last_check
    cdef public object port
    cdef public object ramp_started
    cdef public object requests
    cdef public object seen_healthy
    cdef public object state
    cdef public object weight


cdef class Scheduler:
    cdef public object backends

    cpdef pick(self, client_ip=*, exclude=*)


cdef class WeightedRoundRobin(Scheduler):
    cdef public object _current
    cdef public object _slow_start

    @cython.locals(backend=Backend, current=list)
    cpdef pick(self, client_ip=*, exclude=*)


cdef class RoundRobin(Scheduler):
    cdef public object _next

    @cython.locals(backend=Backend, backends=list)
    cpdef pick(self, client_ip=*, exclude=*)


cdef class WeightedLeastConnections(Scheduler):
    cdef public object _current
    cdef public object _effective
    cdef public object _slow_start

    @cython.locals(backend=Backend, backends=list, current=list)
    cpdef pick(self, client_ip=*, exclude=*)


cdef class SourceIpHash(Scheduler):
    cdef public object _fallback
    cdef public object _owners
    cdef public object _points

    cpdef pick(self, client_ip=*, exclude=*)
