# The compiled build's declaration of dataplane/protocols/gate.py (setup.py).
cdef class BackendReadGate:
    pass
