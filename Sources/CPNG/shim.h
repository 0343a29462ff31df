#ifndef NEWBIE_CPNG_SHIM_H
#define NEWBIE_CPNG_SHIM_H

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libpng reports errors by longjmp, which Swift cannot catch; these helpers set the jump point
 * in C and turn every libpng error into a return code plus a message. Only the calls into
 * libpng live here: the file handling, naming and checks are in Sources/NewBieImage/PNG.swift. */

typedef struct {
    char message[256];
} newbie_png_status;

static void newbie_png_on_error(png_structp png, png_const_charp msg) {
    newbie_png_status *st = (newbie_png_status *)png_get_error_ptr(png);
    if (st) snprintf(st->message, sizeof st->message, "%s", msg ? msg : "libpng error");
    png_longjmp(png, 1);
}

static void newbie_png_on_warning(png_structp png, png_const_charp msg) {
    (void)png; (void)msg;
}

/* One text chunk. itxt != 0 writes an iTXt chunk (UTF-8), else tEXt (Latin-1). */
typedef struct {
    const char *key;
    const char *text;
    int itxt;
} newbie_png_text_in;

/* Writes 8-bit RGB rows (width * 3 bytes each, top to bottom) to `fp`. Returns 1 on success, 0 with
 * `status->message` set on failure. */
static int newbie_png_write_rgb8(FILE *fp, const unsigned char *rgb, unsigned width, unsigned height,
                                 const newbie_png_text_in *texts, int ntexts, int compression_level,
                                 newbie_png_status *status) {
    status->message[0] = 0;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, status, newbie_png_on_error, newbie_png_on_warning);
    if (!png) { snprintf(status->message, sizeof status->message, "out of memory"); return 0; }
    png_infop info = png_create_info_struct(png);
    png_textp chunks = ntexts > 0 ? (png_textp)calloc((size_t)ntexts, sizeof(png_text)) : NULL;
    if (!info || (ntexts > 0 && !chunks)) {
        snprintf(status->message, sizeof status->message, "out of memory");
        png_destroy_write_struct(&png, info ? &info : NULL);
        free(chunks);
        return 0;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(chunks);
        return 0;
    }
    png_init_io(png, fp);
    png_set_compression_level(png, compression_level);
    png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (int i = 0; i < ntexts; i++) {
        chunks[i].compression = texts[i].itxt ? PNG_ITXT_COMPRESSION_NONE : PNG_TEXT_COMPRESSION_NONE;
        chunks[i].key = (png_charp)texts[i].key;
        chunks[i].text = (png_charp)texts[i].text;
        chunks[i].text_length = strlen(texts[i].text);
        chunks[i].lang = NULL;
        chunks[i].lang_key = NULL;
    }
    if (ntexts > 0) png_set_text(png, info, chunks, ntexts);
    png_write_info(png, info);
    for (unsigned y = 0; y < height; y++) {
        png_write_row(png, (png_const_bytep)(rgb + (size_t)y * width * 3));
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(chunks);
    return 1;
}

typedef struct {
    char *key;
    char *text;
} newbie_png_text_out;

/* A decoded image: 8-bit RGB, plus its text chunks. Free with newbie_png_image_free. */
typedef struct {
    unsigned width, height;
    int source_color_type, source_bit_depth;
    unsigned char *pixels;
    unsigned char **rows;
    newbie_png_text_out *texts;
    int ntexts;
} newbie_png_image;

static void newbie_png_image_free(newbie_png_image *img) {
    free(img->pixels); img->pixels = NULL;
    free(img->rows); img->rows = NULL;
    for (int i = 0; i < img->ntexts; i++) { free(img->texts[i].key); free(img->texts[i].text); }
    free(img->texts); img->texts = NULL; img->ntexts = 0;
}

static char *newbie_png_strndup(const char *s, size_t n) {
    char *d = (char *)malloc(n + 1);
    if (d) { memcpy(d, s, n); d[n] = 0; }
    return d;
}

/* Reads any PNG as 8-bit RGB (palette expanded, grey copied to RGB, 16-bit reduced, alpha
 * dropped). Images larger than max_pixels are refused before any pixel memory is allocated.
 * Returns 1 on success, 0 with `status->message` set on failure (img is then empty). */
/* Walks the chunk headers of a seekable file (after the signature) and refuses a chunk whose
 * declared length runs past the end of the file: libpng allocates a chunk's declared length
 * before reading it, so a 96-byte file declaring a 1.6 GB tEXt chunk took 11 s and 1.6 GB
 * (found by fuzzing). Returns 1 when the layout is sound (or the file cannot seek). */
static int newbie_png_check_chunks(FILE *fp, newbie_png_status *status) {
    long start = ftell(fp);
    if (start < 0 || fseek(fp, 0, SEEK_END) != 0) return 1;
    long size = ftell(fp);
    if (size < 0 || fseek(fp, start, SEEK_SET) != 0) return 1;
    long pos = start;
    for (;;) {
        unsigned char h[8];
        if (pos + 8 > size || fread(h, 1, 8, fp) != 8) {
            snprintf(status->message, sizeof status->message, "truncated: the file ends at byte %ld before the IEND chunk", size);
            return 0;
        }
        unsigned long len = ((unsigned long)h[0] << 24) | ((unsigned long)h[1] << 16) | ((unsigned long)h[2] << 8) | h[3];
        char type[5];
        for (int i = 0; i < 4; i++) type[i] = (h[4 + i] >= 32 && h[4 + i] < 127) ? (char)h[4 + i] : '?';
        type[4] = 0;
        if (len > 0x7fffffffUL || (unsigned long)(size - pos) < len + 12) {
            snprintf(status->message, sizeof status->message,
                     "chunk %s at byte %ld declares %lu bytes but the file has %ld left (truncated or corrupt)", type, pos, len, size - pos - 12);
            return 0;
        }
        if (memcmp(h + 4, "IEND", 4) == 0) break;
        pos += 12 + (long)len;
        if (fseek(fp, pos, SEEK_SET) != 0) return 1;
    }
    fseek(fp, start, SEEK_SET);
    return 1;
}

static int newbie_png_read_rgb8(FILE *fp, unsigned long long max_pixels, newbie_png_image *img,
                                newbie_png_status *status) {
    memset(img, 0, sizeof *img);
    status->message[0] = 0;
    unsigned char sig[8];
    if (fread(sig, 1, 8, fp) != 8 || png_sig_cmp(sig, 0, 8) != 0) {
        snprintf(status->message, sizeof status->message, "not a PNG file (bad signature)");
        return 0;
    }
    if (!newbie_png_check_chunks(fp, status)) return 0;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, status, newbie_png_on_error, newbie_png_on_warning);
    if (!png) { snprintf(status->message, sizeof status->message, "out of memory"); return 0; }
    png_infop info = png_create_info_struct(png);
    png_infop end_info = png_create_info_struct(png);
    if (!info || !end_info) {
        snprintf(status->message, sizeof status->message, "out of memory");
        png_destroy_read_struct(&png, info ? &info : NULL, end_info ? &end_info : NULL);
        return 0;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, &end_info);
        newbie_png_image_free(img);
        return 0;
    }
    png_init_io(png, fp);
    png_set_sig_bytes(png, 8);
    png_set_crc_action(png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
    /* Ancillary chunks over 16 MiB and more than 1000 of them are skipped (libpng warns). */
    png_set_chunk_malloc_max(png, 16u << 20);
    png_set_chunk_cache_max(png, 1000);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    img->source_color_type = color;
    img->source_bit_depth = depth;
    if ((unsigned long long)w * (unsigned long long)h > max_pixels) {
        png_error(png, "image is larger than the allowed pixel count");
    }
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_scale_16(png);
    /* alpha channels, and palette transparency that the expansion turns into alpha, are dropped */
    if ((color & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS)) png_set_strip_alpha(png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != (size_t)w * 3) {
        png_error(png, "unexpected row size after conversion to 8-bit RGB");
    }
    img->width = w;
    img->height = h;
    img->pixels = (unsigned char *)malloc((size_t)w * h * 3 + 1);
    img->rows = (unsigned char **)malloc(sizeof(unsigned char *) * (h ? h : 1));
    if (!img->pixels || !img->rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) img->rows[y] = img->pixels + (size_t)y * w * 3;
    png_read_image(png, img->rows);
    png_read_end(png, end_info);
    /* text chunks before and after the image data */
    png_infop sources[2] = {info, end_info};
    int total = 0;
    for (int s = 0; s < 2; s++) { png_textp t; total += png_get_text(png, sources[s], &t, NULL); }
    if (total > 0) {
        img->texts = (newbie_png_text_out *)calloc((size_t)total, sizeof(newbie_png_text_out));
        if (!img->texts) png_error(png, "out of memory");
        for (int s = 0; s < 2; s++) {
            png_textp t;
            int n = png_get_text(png, sources[s], &t, NULL);
            for (int i = 0; i < n; i++) {
                size_t len = t[i].compression >= PNG_ITXT_COMPRESSION_NONE ? t[i].itxt_length : t[i].text_length;
                img->texts[img->ntexts].key = newbie_png_strndup(t[i].key, strlen(t[i].key));
                img->texts[img->ntexts].text = newbie_png_strndup(t[i].text ? t[i].text : "", t[i].text ? len : 0);
                img->ntexts++;
                if (!img->texts[img->ntexts - 1].key || !img->texts[img->ntexts - 1].text) png_error(png, "out of memory");
            }
        }
    }
    png_destroy_read_struct(&png, &info, &end_info);
    return 1;
}

#endif
