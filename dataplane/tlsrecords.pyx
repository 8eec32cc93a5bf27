# cython: language_level=3, boundscheck=False, wraparound=False
"""TLS records in and out of a finished session, in C.

After its handshake, a client's TLS connection only turns records into plaintext and plaintext
into records. Python's `ssl.SSLObject` does each step as a Python call that releases and retakes
the GIL and answers "no more records" with an `SSLWantReadError` exception: measured under
callgrind, about 11,000 instructions per HTTPS request around some 15,000 of OpenSSL's own
record work. A `RecordPump` makes the same OpenSSL calls (SSL_read_ex, SSL_write_ex, the memory
BIOs) on the same `SSL` object, from C, with the GIL held.

The handshake stays with `ssl.SSLObject` (the SNI callback, ALPN, client certificates, ACME's
challenge answers all live there), and so does everything a request reads of the session
(`selected_alpn_protocol`, `getpeercert`, `cipher`).

The `SSL` and `BIO` pointers are read from CPython's `_ssl` objects, whose layouts are private.
`usable` says whether they were found: the Python version is one whose layout this module knows,
the `_ssl` module and this one use the same OpenSSL build, and a probe session's pointers agree
with each other. Where they were not, `dataplane.protocols.tls_layer` uses `ssl.SSLObject` for
the records too.
"""

import ssl
import sys

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject


cdef extern from "openssl/ssl.h":
    int SSL_read_ex(SSL *s, void *buf, size_t num, size_t *readbytes) nogil
    int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written) nogil
    int SSL_get_error(const SSL *s, int ret) nogil
    int SSL_shutdown(SSL *s) nogil
    int SSL_pending(const SSL *s) nogil
    BIO *SSL_get_rbio(const SSL *s) nogil
    BIO *SSL_get_wbio(const SSL *s) nogil
    unsigned long OpenSSL_version_num() nogil
    int SSL_ERROR_NONE
    int SSL_ERROR_SSL
    int SSL_ERROR_WANT_READ
    int SSL_ERROR_WANT_WRITE
    int SSL_ERROR_SYSCALL
    int SSL_ERROR_ZERO_RETURN

cdef extern from "openssl/bio.h":
    int BIO_write(BIO *b, const void *data, int dlen) nogil
    int BIO_read(BIO *b, void *data, int dlen) nogil
    size_t BIO_ctrl_pending(BIO *b) nogil

cdef extern from "openssl/err.h":
    unsigned long ERR_peek_last_error() nogil
    const char *ERR_reason_error_string(unsigned long e) nogil
    void ERR_clear_error() nogil

# CPython's _ssl objects as far as this module reads them (Modules/_ssl.c, 3.11 to 3.13): an
# SSLObject's `_sslobj` holds the `SSL *` after its weak reference to a socket, a MemoryBIO its
# `BIO *` first.
cdef extern from *:
    """
    typedef struct {
        PyObject_HEAD
        PyObject *Socket;
        SSL *ssl;
    } FerrySslSocket;

    typedef struct {
        PyObject_HEAD
        BIO *bio;
    } FerryMemoryBio;
    """
    ctypedef struct FerrySslSocket:
        SSL *ssl
    ctypedef struct FerryMemoryBio:
        BIO *bio


# Plaintext handed to the owner per `read`: four full records, as one bytes object. The buffer is
# the module's: one event loop thread runs the dataplane's TLS, and `read` copies out of it.
cdef enum:
    CHUNK = 65536
cdef char _plaintext[CHUNK]


cdef SSL *_ssl_of(object ssl_object) except NULL:
    cdef object inner = ssl_object._sslobj
    if type(inner) is not _SSL_SOCKET_TYPE:
        raise TypeError("not an _ssl._SSLSocket")
    return (<FerrySslSocket *><PyObject *>inner).ssl


cdef BIO *_bio_of(object memory_bio) except NULL:
    if type(memory_bio) is not ssl.MemoryBIO:
        raise TypeError("not an ssl.MemoryBIO")
    return (<FerryMemoryBio *><PyObject *>memory_bio).bio


cdef object _failure(SSL *session, int ret):
    """The exception for a failed SSL call; None for a retry (more records needed).

    SSL_get_error takes any error in the thread's queue for this call's, so a failure leaves the
    queue empty, as CPython's `_ssl` does after each of its own.
    """
    cdef int code = SSL_get_error(session, ret)
    cdef unsigned long last
    cdef const char *reason
    if code == SSL_ERROR_WANT_READ:
        return None
    last = ERR_peek_last_error()
    reason = ERR_reason_error_string(last) if last else NULL
    ERR_clear_error()
    if code == SSL_ERROR_WANT_WRITE:
        # A memory BIO takes any amount; a session that still wants to write is renegotiating,
        # which OpenSSL 3 refuses from clients by default.
        return ssl.SSLError(code, "TLS session wants to write during a read or write")
    if reason != NULL:
        return ssl.SSLError(code, reason.decode("ascii", "replace"))
    return ssl.SSLError(code, "TLS record error")


cdef class RecordPump:
    """The records of one finished TLS session, moved by OpenSSL from C.

    `feed` takes ciphertext from the network; `read` returns the plaintext it holds (b"" when a
    record is still incomplete); `write` returns the records for some plaintext; `drain` what
    OpenSSL has queued on its own (session tickets, key updates, alerts); `shutdown` the
    close_notify. `eof` is True once the peer's close_notify has been read.
    """

    def __init__(self, ssl_object: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO):
        self.session = _ssl_of(ssl_object)
        self.incoming = _bio_of(incoming)
        self.outgoing = _bio_of(outgoing)
        if SSL_get_rbio(self.session) != self.incoming or SSL_get_wbio(self.session) != self.outgoing:
            raise ValueError("the SSLObject does not read and write these memory BIOs")
        self.ssl_object = ssl_object
        self.incoming_bio = incoming
        self.outgoing_bio = outgoing
        self.eof = False

    cpdef feed(self, bytes data):
        cdef Py_ssize_t size = len(data)
        if size and BIO_write(self.incoming, PyBytes_AS_STRING(data), <int>size) != size:
            raise MemoryError("TLS input buffer")

    cpdef bytes read(self):
        cdef size_t got = 0
        cdef size_t total = 0
        cdef int ret
        cdef object failure
        if self.eof:
            return b""
        while total < CHUNK:
            ret = SSL_read_ex(self.session, _plaintext + total, CHUNK - total, &got)
            if ret == 1:
                total += got
                # A read that finds nothing costs OpenSSL as much as one that decrypts a record:
                # it is made only when there is something to read.
                if SSL_pending(self.session) > 0 or BIO_ctrl_pending(self.incoming) > 0:
                    continue
                break
            if SSL_get_error(self.session, ret) == SSL_ERROR_ZERO_RETURN:
                self.eof = True
                break
            failure = _failure(self.session, ret)
            if failure is None:
                break
            raise failure
        if total == 0:
            return b""
        return PyBytes_FromStringAndSize(_plaintext, total)

    cpdef bint pending(self):
        """Whether `read` would find something without new input."""
        return SSL_pending(self.session) > 0 or BIO_ctrl_pending(self.incoming) > 0

    cpdef bytes write(self, bytes data):
        cdef size_t written = 0
        cdef Py_ssize_t size = len(data)
        cdef int ret
        if size:
            ret = SSL_write_ex(self.session, PyBytes_AS_STRING(data), <size_t>size, &written)
            if ret != 1:
                raise _failure(self.session, ret) or ssl.SSLError(0, "TLS write")
        return self.drain()

    cpdef bytes drain(self):
        cdef size_t size = BIO_ctrl_pending(self.outgoing)
        cdef bytes records
        if size == 0:
            return b""
        records = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>size)
        BIO_read(self.outgoing, PyBytes_AS_STRING(records), <int>size)
        return records

    cpdef bytes shutdown(self):
        # 0: our close_notify is out and the peer's not yet read, which is all a server waits for.
        if SSL_shutdown(self.session) < 0:
            ERR_clear_error()
        return self.drain()


cdef object _SSL_SOCKET_TYPE = None


def _probe() -> bool:
    """Whether the pointers read from `_ssl`'s objects are the ones OpenSSL uses."""
    global _SSL_SOCKET_TYPE
    if not ((3, 11) <= sys.version_info[:2] <= (3, 13)):
        return False
    if OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        return False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ssl_object = context.wrap_bio(incoming, outgoing, server_side=True)
    _SSL_SOCKET_TYPE = type(ssl_object._sslobj)
    try:
        RecordPump(ssl_object, incoming, outgoing)
    except (TypeError, ValueError):
        return False
    return True


usable: bool = _probe()
