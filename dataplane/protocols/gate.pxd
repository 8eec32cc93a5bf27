# The compiled build's declaration of dataplane/protocols/gate.py (setup.py).
from dataplane.upstream cimport Owner


cdef class BackendReadGate(Owner):
    pass
