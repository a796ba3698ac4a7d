/* Decode one window of a JPEG with libjpeg-turbo, and nothing the window does not need.
 *
 * The training crop of an ImageNet photo covers 15-60% of it. A whole-image decode spends most of its time in the
 * inverse DCT, chroma upsampling and colour conversion of pixels the crop never uses. libjpeg-turbo (>= 1.5) can skip
 * them: jpeg_crop_scanline() limits those stages to the window's columns, jpeg_skip_scanlines() to its rows (the rows
 * above are only entropy-decoded), and the decode stops after the window's bottom row. Neither Pillow nor torchvision
 * exposes these calls, hence this module.
 *
 * decode_window(data, out, reduce, x0, y0, x1, y1) -> (xoffset, output_width) or None
 *
 *   data     the JPEG file's bytes (any contiguous buffer)
 *   out      a writable buffer of at least y1 * stride * 3 bytes, stride = len(out) // (3 * y1): the image's rows
 *            0..y1-1 as RGB, row-major (HWC). Only rows y0..y1-1, columns xoffset..x1-1 are written.
 *   reduce   1, 2, 4 or 8: libjpeg's DCT-domain downscale; coordinates are in the downscaled image
 *            (output_width = ceil(width / reduce))
 *   x0..x1, y0..y1   the window the caller needs; xoffset <= x0 is where libjpeg's column alignment starts it
 *
 * MARGIN (a module constant): columns decoded beyond each side of the window, so the stride must be at least
 * min(x1 + MARGIN, output_width).
 *
 * Returns None, having written nothing the caller may use, where this path does not apply or cannot be trusted: not
 * a 1- or 3-component JPEG (CMYK goes elsewhere), a window outside the image or wider than the stride, any libjpeg
 * warning (corrupt or truncated data) or error. The caller then decodes the whole image, whose decoder decides
 * whether the file is broken. The GIL is released while libjpeg runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>

#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int warnings;
} error_mgr;

static void on_error(j_common_ptr cinfo) { longjmp(((error_mgr *)cinfo->err)->jump, 1); }

static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) ((error_mgr *)cinfo->err)->warnings++; /* level >= 0: trace messages, ignored */
}

static void silent(j_common_ptr cinfo) { (void)cinfo; }

#define ROWS_PER_CALL 16
#define MARGIN 2 /* columns decoded beyond each side of the window */

/* 0 on success (xoffset and output width set), -1 where the caller must decode the whole image. No Python calls. */
static int run(const unsigned char *src, size_t len, unsigned char *dst, size_t dst_len, int reduce, int x0, int y0,
               int x1, int y1, int *xoffset, int *output_width) {
    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    JSAMPROW rows[ROWS_PER_CALL];
    size_t stride;

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.pub.output_message = silent;
    err.warnings = 0;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, src, (unsigned long)len);
    if (jpeg_read_header(&cinfo, TRUE) != JPEG_HEADER_OK) goto fallback;
    if (!((cinfo.num_components == 3 && (cinfo.jpeg_color_space == JCS_YCbCr || cinfo.jpeg_color_space == JCS_RGB)) ||
          (cinfo.num_components == 1 && cinfo.jpeg_color_space == JCS_GRAYSCALE)))
        goto fallback;
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)reduce;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3 || x1 > (int)cinfo.output_width || y1 > (int)cinfo.output_height) goto fallback;
    stride = dst_len / (3 * (size_t)y1);
    *output_width = (int)cinfo.output_width;
    {
        /* Chroma upsampling treats the cropped columns' edges as the image's: a margin keeps them off the window. */
        JDIMENSION x = (JDIMENSION)(x0 > MARGIN ? x0 - MARGIN : 0);
        JDIMENSION right = (JDIMENSION)x1 + MARGIN < cinfo.output_width ? (JDIMENSION)x1 + MARGIN : cinfo.output_width;
        JDIMENSION width = right - x;
        if ((size_t)right > stride) goto fallback;
        if (width < cinfo.output_width) jpeg_crop_scanline(&cinfo, &x, &width); /* x moves left to an iMCU edge */
        *xoffset = (int)x;
    }
    if (y0 > 0 && jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0) != (JDIMENSION)y0) goto fallback;
    while (cinfo.output_scanline < (JDIMENSION)y1) {
        int n = y1 - (int)cinfo.output_scanline, i;
        if (n > ROWS_PER_CALL) n = ROWS_PER_CALL;
        for (i = 0; i < n; i++)
            rows[i] = dst + ((size_t)cinfo.output_scanline + i) * stride * 3 + (size_t)*xoffset * 3;
        if (jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)n) == 0) goto fallback; /* suspended: data ran out */
    }
    if (err.warnings) goto fallback;
    jpeg_destroy_decompress(&cinfo); /* stops here: the rows below the window are never decoded */
    return 0;
fallback:
    jpeg_destroy_decompress(&cinfo);
    return -1;
}

static PyObject *decode_window(PyObject *self, PyObject *args) {
    Py_buffer data, out;
    int reduce, x0, y0, x1, y1, xoffset = 0, output_width = 0, status;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*iiiii", &data, &out, &reduce, &x0, &y0, &x1, &y1)) return NULL;
    if (!(reduce == 1 || reduce == 2 || reduce == 4 || reduce == 8) || x0 < 0 || y0 < 0 || x1 <= x0 || y1 <= y0 ||
        (size_t)out.len < (size_t)y1 * (size_t)x1 * 3) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "decode_window: bad reduce, window or output size");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    status = run((const unsigned char *)data.buf, (size_t)data.len, (unsigned char *)out.buf, (size_t)out.len, reduce,
                 x0, y0, x1, y1, &xoffset, &output_width);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    if (status != 0) Py_RETURN_NONE;
    return Py_BuildValue("(ii)", xoffset, output_width);
}

static PyMethodDef methods[] = {
    {"decode_window", decode_window, METH_VARARGS,
     "decode_window(data, out, reduce, x0, y0, x1, y1) -> (xoffset, output_width) or None; see the module source."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpegwindow",
    "Decode one window of a JPEG with libjpeg-turbo (cropped columns, skipped rows, early stop).", -1, methods,
};

PyMODINIT_FUNC PyInit__jpegwindow(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL) PyModule_AddIntConstant(m, "MARGIN", MARGIN);
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
    if (m != NULL) PyModule_AddIntConstant(m, "LIBJPEG_TURBO_VERSION_NUMBER", LIBJPEG_TURBO_VERSION_NUMBER);
#endif
    return m;
}
