# Declarations of dataplane/heads.pyx: the compiled hot path cimports these functions and calls
# them in C, not through a Python call.

cpdef list special_lines(bytes head)
cpdef bint fits_request_line(bytes method, bytes path, bytes authority) except -1
cpdef tuple head_span(bytes buffer, Py_ssize_t start)
cpdef bytes field_line(bytes name, bytes value)
cpdef int line_version(bytes data, bytes method, bytes url) except -1
