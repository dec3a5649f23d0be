// The decompressors of Linux bzImage payloads: liblzma (XZ), zlib (gzip), libzstd (zstd).
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>
