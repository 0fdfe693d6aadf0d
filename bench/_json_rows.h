// _json_rows.h — the C++ benches' JSON: an array of flat objects, one key per line, as `deno fmt` lays
// out objects this long (CI checks bench/results/ too).
#pragma once

#include <cstdio>

// Writes `n` rows to path, write_row(f, i) printing row i's keys (each line "    \"key\": value", joined by
// ",\n", without the braces). False, with a message on stderr, when the file cannot be written.
template <class WriteRow>
bool write_json_rows(const char *path, size_t n, WriteRow &&write_row) {
  FILE *f = std::fopen(path, "w");
  if (!f) {
    std::fprintf(stderr, "cannot write %s\n", path);
    return false;
  }
  std::fprintf(f, "[\n");
  for (size_t i = 0; i < n; i++) {
    std::fprintf(f, "  {\n");
    write_row(f, i);
    std::fprintf(f, "\n  }%s\n", i + 1 < n ? "," : "");
  }
  std::fprintf(f, "]\n");
  return std::fclose(f) == 0;
}
