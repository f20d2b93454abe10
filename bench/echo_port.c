/* echo_port: the floor for a call round trip. It echoes every {packet,4}
 * frame from stdin back to stdout unchanged, doing nothing else, so a
 * benchmark run through the same Erlang port settings shows what the pipes
 * and the port machinery alone cost. Frames that arrive together go back
 * in one write, as the worker does. Exits 0 at end of input. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_all(const unsigned char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(1, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static unsigned char* grow(unsigned char* buf, size_t* cap, size_t need) {
  size_t c = *cap;
  while (c < need)
    c *= 2;
  if (c == *cap) return buf;
  unsigned char* p = realloc(buf, c);
  if (!p) exit(1);
  *cap = c;
  return p;
}

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  /* --grow-pipes: both pipes hold 1 MiB, as a worker's do once big frames
   * have crossed them (port_worker/frame_writer.hpp). */
  if (argc > 1 && strcmp(argv[1], "--grow-pipes") == 0) {
    fcntl(0, F_SETPIPE_SZ, 1 << 20);
    fcntl(1, F_SETPIPE_SZ, 1 << 20);
  }
  size_t cap = 1 << 16, len = 0;
  unsigned char* buf = malloc(cap);
  if (!buf) return 1;
  for (;;) {
    if (len == cap) buf = grow(buf, &cap, cap + 1);
    ssize_t r = read(0, buf + len, cap - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    len += (size_t)r;
    /* Echo the complete frames; keep a partial one for the next read. */
    size_t done = 0, need = 0;
    while (len - done >= 4) {
      const unsigned char* h = buf + done;
      size_t frame = 4 + ((size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3]);
      if (len - done < frame) {
        need = frame; /* make room for all of it at once */
        break;
      }
      done += frame;
    }
    if (done > 0) {
      if (write_all(buf, done) < 0) break;
      memmove(buf, buf + done, len - done);
      len -= done;
    }
    if (need > cap) buf = grow(buf, &cap, need);
  }
  free(buf);
  return 0;
}
