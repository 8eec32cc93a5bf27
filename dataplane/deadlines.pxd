# The compiled build's declarations for dataplane/deadlines.py (setup.py): the listener's deadline
# wheel becomes an extension type, and watching and forgetting are C calls from the proxies. Every
# name in __slots__ is declared here (tests/dataplane/test_compiled_modules.py keeps the lists
# equal). The .py stays the source.
cimport cython


cdef class Deadlines:
    cdef public object armed
    cdef public object loop
    cdef public dict slots
    cdef public list ticks
    cdef public object timer

    @cython.locals(slot=set)
    cpdef watch(self, owner, double when)
    @cython.locals(slot=set)
    cpdef forget(self, owner, tick)
