#include <rfb/rfb.h>

/* rfbInitServer is a macro naming the variant the library was built as (threads, ZRLE). */
static inline void mv_rfb_init_server(rfbScreenInfoPtr screen) { rfbInitServer(screen); }
