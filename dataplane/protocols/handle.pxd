# The compiled build's declarations for dataplane/protocols/handle.py (setup.py): a listener's
# handle becomes an extension type, so the exchange reads its settings, counters and timer as C
# fields. Every name in its __slots__ is declared here (tests/dataplane/test_compiled_modules.py
# keeps the lists equal). The .py stays the source.
from dataplane.deadlines cimport Deadlines
from dataplane.protocols.settings cimport ListenerSettings
from dataplane.stats cimport ListenerStats


cdef class ListenerHandle:
    cdef public object access_log
    cdef public set connections
    cdef public Deadlines deadlines
    cdef public object descriptors
    cdef public object loop
    cdef public ListenerSettings settings
    cdef public ListenerStats stats
