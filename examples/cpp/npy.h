// Writes a float32, C-order .npy file (NumPy format 1.0) atomically: a temporary file beside the target,
// flushed to disk, then renamed over it, so a reader never sees half a file and a failure loses nothing.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace gencc {

inline std::string npy_header(const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);   // "(n, 2)"; a 1-D shape keeps its comma: "(n,)"
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Magic (6) + version (2) + length (2) + dict + padding + '\n' is a multiple of 64 bytes.
  size_t total = (10 + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - 10 - dict.size() - 1, ' ');
  dict += '\n';
  std::string head("\x93NUMPY\x01\x00", 8);
  head += char(dict.size() & 0xFF);
  head += char(dict.size() >> 8);
  return head + dict;
}

inline void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<float>& data) {
  static_assert(sizeof(float) == 4, "float32 expected");
  const uint16_t probe = 1;
  if (*reinterpret_cast<const unsigned char*>(&probe) != 1) throw std::runtime_error("big-endian hosts are not supported");
  std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + tmp);
  std::string head = npy_header(shape);
  bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size() &&
            std::fwrite(data.data(), sizeof(float), data.size(), f) == data.size() && std::fflush(f) == 0 &&
            ::fsync(fileno(f)) == 0;
  ok = std::fclose(f) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path + " (disk full or no permission?)");
  }
}

}  // namespace gencc
