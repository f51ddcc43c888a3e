"""Array checks and allocations through NumPy's C API, for the kernels' Python boundary.

Inputs that already are what a kernel reads (the usual case) are recognised by the C API's
flag macros, without a conversion call; anything else goes through NumPy's conversions as
before.  Modules that cimport this call ``cnp.import_array()`` at import.
"""
cimport numpy as cnp


cdef inline bint is_native(x, int type_num, int ndim):
    """Whether x is a plain ndarray of ``ndim`` dimensions of aligned, native-order ``type_num`` values."""
    return (cnp.PyArray_CheckExact(x) and cnp.PyArray_TYPE(<cnp.ndarray>x) == type_num
            and cnp.PyArray_NDIM(<cnp.ndarray>x) == ndim and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>x))


cdef inline bint is_native_c(x, int type_num, int ndim):
    """``is_native``, and C-contiguous."""
    return is_native(x, type_num, ndim) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x)


cdef inline cnp.ndarray empty(int ndim, cnp.npy_intp *shape, int type_num):
    """A new C-contiguous array (np.empty without the Python-level call)."""
    return cnp.PyArray_EMPTY(ndim, shape, type_num, 0)
