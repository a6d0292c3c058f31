// The one bounded reader of little-endian bytes: the blob header's fields and
// the zip directories of model archives are read through it. It knows how
// many bytes remain and checks before every read, so a wrong offset in
// untrusted bytes is a false return, never a read outside the range.
// Internal; torch-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace zcwrap::detail {

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  // Moves to byte `pos`; false (and no move) past the end.
  bool seek(uint64_t pos) {
    if (pos > size_) return false;
    pos_ = static_cast<size_t>(pos);
    return true;
  }
  bool skip(uint64_t n) { return n <= size_ - pos_ && seek(pos_ + n); }

  bool read_u16(uint16_t* out) { return read(out); }
  bool read_u32(uint32_t* out) { return read(out); }
  bool read_u64(uint64_t* out) { return read(out); }
  // `n` bytes as a string.
  bool read_string(size_t n, std::string* out) {
    if (n > size_ - pos_) return false;
    out->assign(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return true;
  }

  size_t position() const { return pos_; }
  size_t size() const { return size_; }

 private:
  template <typename T>
  bool read(T* out) {
    if (size_ - pos_ < sizeof(T)) return false;
    T v = 0;
    for (size_t i = sizeof(T); i-- > 0;) v = static_cast<T>((v << 8) | data_[pos_ + i]);
    pos_ += sizeof(T);
    *out = v;
    return true;
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace zcwrap::detail
