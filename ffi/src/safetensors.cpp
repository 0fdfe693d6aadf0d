// safetensors.cpp — validated reading of .safetensors files and sharded model folders.
#include "safetensors.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "json.h"

namespace kf {

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated at open: no overflow
  return n;
}

int safetensors_dtype_bits(const std::string &d) {
  static const std::pair<const char *, int> table[] = {
      {"F64", 64},     {"I64", 64},      {"U64", 64},     {"F32", 32},   {"I32", 32},   {"U32", 32},
      {"F16", 16},     {"BF16", 16},     {"I16", 16},     {"U16", 16},   {"I8", 8},     {"U8", 8},
      {"BOOL", 8},     {"F8_E4M3", 8},   {"F8_E5M2", 8},  {"F8_E8M0", 8}, {"F6_E2M3", 6}, {"F6_E3M2", 6},
      {"F4", 4},       {"C64", 64}};
  for (const auto &e : table)
    if (d == e.first) return e.second;
  return 0;
}

namespace {

// All-ones exponent = Inf or NaN. Blocks keep the loop branch-free (vectorised) and still stop early.
template <typename U, U kExp>
int64_t first_with_exp_all_ones(const uint8_t *p, int64_t n) {
  constexpr int64_t kBlock = 4096;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    unsigned bad = 0;
    for (int64_t i = b; i < e; i++) {
      U u;
      std::memcpy(&u, p + size_t(i) * sizeof(U), sizeof(U));
      bad |= unsigned((u & kExp) == kExp);
    }
    if (bad) {
      for (int64_t i = b; i < e; i++) {
        U u;
        std::memcpy(&u, p + size_t(i) * sizeof(U), sizeof(U));
        if ((u & kExp) == kExp) return i;
      }
    }
  }
  return -1;
}

}  // namespace

int64_t first_non_finite(const uint8_t *data, DType dt, int64_t n) {
  switch (dt) {
  case DType::F32: return first_with_exp_all_ones<uint32_t, 0x7f800000u>(data, n);
  case DType::F16: return first_with_exp_all_ones<uint16_t, 0x7c00u>(data, n);
  case DType::BF16: return first_with_exp_all_ones<uint16_t, 0x7f80u>(data, n);
  default: break;  // quantized blocks are made from checked f32 rows (model.cpp)
  }
  return -1;
}

namespace {

// A printable rendering of an untrusted name for messages (names come from file contents).
std::string shown(const std::string &s) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= 200) {
      out += "...";
      break;
    }
    out += (c >= 0x20 && c != 0x7f) ? char(c) : '?';
  }
  return out;
}

std::string shape_str(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string join_path(const std::string &dir, const std::string &name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

}  // namespace

namespace {
void watch_mapping(const void *base, size_t len, const std::string &path) noexcept;
void unwatch_mapping(const void *base) noexcept;
}  // namespace

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string &path, bool use_mmap, const char *action) : path_(path) {
  if (!action) action = "load model";
  const char *p = path_.c_str();
  uint64_t size = 0;
  const int fd = open_regular_file(path_, action, &size);
  try {
    size_ = size;
    if (size < 8)
      raise(KF_ERR_FORMAT, "cannot %s: %s is %llu bytes, too short for a safetensors file (at least 8)", action, p,
            static_cast<unsigned long long>(size));
    if (size > uint64_t(SIZE_MAX) / 2)
      raise(KF_ERR_FORMAT, "cannot %s: %s is too large to address", action, p);

    uint8_t len_bytes[8];
    if (use_mmap) {
      void *m = ::mmap(nullptr, size_t(size), PROT_READ, MAP_PRIVATE, fd, 0);
      if (m == MAP_FAILED)
        raise(KF_ERR_IO, "cannot %s: cannot map %s: %s", action, p, errno_text(errno).c_str());
      base_ = static_cast<uint8_t *>(m);
      alloc_ = size_t(size);
      file_off_ = 0;
      mapped_ = true;
      watch_mapping(base_, alloc_, path_);
      std::memcpy(len_bytes, base_, 8);
    } else {
      read_fully(fd, len_bytes, 8, path_, action);
    }

    uint64_t n = 0;
    for (int k = 7; k >= 0; k--) n = n << 8 | len_bytes[k];
    if (n > size - 8)
      raise(KF_ERR_FORMAT, "cannot %s: %s: header length %llu exceeds the %llu bytes after the length field", action,
            p, static_cast<unsigned long long>(n), static_cast<unsigned long long>(size - 8));
    if (n > kSafetensorsMaxHeader)
      raise(KF_ERR_FORMAT, "cannot %s: %s: header length %llu is above the %llu accepted", action, p,
            static_cast<unsigned long long>(n), static_cast<unsigned long long>(kSafetensorsMaxHeader));
    header_len_ = n;

    if (!use_mmap) {
      // Pad in front so that the data section (file offset 8 + n) lands on a 64-byte boundary.
      const size_t pad = size_t((64 - (8 + n) % 64) % 64);
      // Anonymous pages, huge where the kernel allows (advice only): reading gigabytes into 4 KiB
      // pages costs a page fault per page, several times the copy itself (bench/model_load.ts).
      void *buf = ::mmap(nullptr, pad + size_t(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (buf == MAP_FAILED)
        raise(KF_ERR_OUT_OF_MEMORY, "cannot %s: cannot allocate %llu bytes to read %s: %s", action,
              static_cast<unsigned long long>(size), p, errno_text(errno).c_str());
#ifdef MADV_HUGEPAGE
      ::madvise(buf, pad + size_t(size), MADV_HUGEPAGE);
#endif
      alloc_ = pad + size_t(size);
      base_ = static_cast<uint8_t *>(buf);
      file_off_ = pad;
      std::memcpy(base_ + pad, len_bytes, 8);
      read_fully(fd, base_ + pad + 8, size_t(size) - 8, path_, action);
    }
  } catch (...) {
    ::close(fd);
    release();
    throw;
  }
  ::close(fd);

  try {
    const uint8_t *file = base_ + file_off_;
    const Json header = parse_json(reinterpret_cast<const char *>(file + 8), size_t(header_len_), p, action);
    if (!header.is_object())
      raise(KF_ERR_FORMAT, "cannot %s: %s: header is %s, not a JSON object", action, p, header.type_name());
    const uint64_t data_len = size_ - 8 - header_len_;
    const uint8_t *data = file + 8 + header_len_;

    tensors_.reserve(header.size());
    for (const Json::Member &m : header.members()) {
      const std::string &name = m.first;
      const Json &v = m.second;
      if (name == "__metadata__") {
        if (!v.is_object())
          raise(KF_ERR_FORMAT, "cannot %s: %s: __metadata__ is %s, not an object", action, p, v.type_name());
        for (const Json::Member &kv : v.members()) {
          if (!kv.second.is_string())
            raise(KF_ERR_FORMAT, "cannot %s: %s: __metadata__ value of \"%s\" is %s, not a string", action, p,
                  shown(kv.first).c_str(), kv.second.type_name());
          metadata_.emplace_back(kv.first, kv.second.as_string());
        }
        continue;
      }
      const std::string nm = shown(name);
      const char *tn = nm.c_str();
      if (!v.is_object())
        raise(KF_ERR_FORMAT, "cannot %s: %s: tensor %s: entry is %s, not an object", action, p, tn, v.type_name());
      const Json *dt = v.find("dtype");
      const Json *sh = v.find("shape");
      const Json *off = v.find("data_offsets");
      if (!dt || !dt->is_string())
        raise(KF_ERR_FORMAT, "cannot %s: %s: tensor %s has no dtype string", action, p, tn);
      if (!sh || !sh->is_array())
        raise(KF_ERR_FORMAT, "cannot %s: %s: tensor %s has no shape array", action, p, tn);
      if (!off || !off->is_array() || off->size() != 2 || !off->items()[0].is_integer() ||
          !off->items()[1].is_integer())
        raise(KF_ERR_FORMAT, "cannot %s: %s: tensor %s: data_offsets must be an array of two integers", action, p,
              tn);

      TensorInfo t;
      t.name = name;
      t.dtype_str = dt->as_string();
      t.file = path_;
      if (t.dtype_str == "F32") t.dtype = DType::F32, t.dtype_supported = true;
      else if (t.dtype_str == "F16") t.dtype = DType::F16, t.dtype_supported = true;
      else if (t.dtype_str == "BF16") t.dtype = DType::BF16, t.dtype_supported = true;

      // shape: non-negative integers whose product fits int64
      bool has_zero = false;
      t.shape.reserve(sh->size());
      for (const Json &d : sh->items()) {
        if (!d.is_integer() || d.as_int64() < 0)
          raise(KF_ERR_FORMAT, "cannot %s: %s: tensor %s: shape must hold non-negative integers", action, p, tn);
        t.shape.push_back(d.as_int64());
        has_zero |= d.as_int64() == 0;
      }
      uint64_t numel = has_zero ? 0 : 1;
      if (!has_zero) {
        for (int64_t d : t.shape) {
          if (numel > uint64_t(INT64_MAX) / uint64_t(d))
            raise(KF_ERR_FORMAT, "cannot %s: %s: tensor %s: shape %s has too many elements", action, p, tn,
                  shape_str(t.shape).c_str());
          numel *= uint64_t(d);
        }
      }

      const int64_t b = off->items()[0].as_int64(), e = off->items()[1].as_int64();
      if (b < 0 || e < b || uint64_t(e) > data_len)
        raise(KF_ERR_FORMAT,
              "cannot %s: %s: tensor %s: data_offsets [%lld, %lld] are outside the data section of %llu bytes",
              action, p, tn, static_cast<long long>(b), static_cast<long long>(e),
              static_cast<unsigned long long>(data_len));
      const uint64_t nbytes = uint64_t(e) - uint64_t(b);
      const int bits = safetensors_dtype_bits(t.dtype_str);
      if (bits > 0) {
        // numel < 2^63 and bits <= 64, so the product fits 128 bits.
        const unsigned __int128 need_bits = static_cast<unsigned __int128>(numel) * unsigned(bits);
        if (need_bits % 8 != 0 || need_bits / 8 != nbytes) {
          const std::string need = need_bits % 8                ? std::string("a non-whole number of")
                                   : need_bits / 8 > UINT64_MAX ? std::string("more than 2^64")
                                                                : std::to_string(static_cast<unsigned long long>(need_bits / 8));
          raise(KF_ERR_FORMAT, "cannot %s: %s: tensor %s: data_offsets span %llu bytes, but %s %s needs %s bytes",
                action, p, tn, static_cast<unsigned long long>(nbytes), shown(t.dtype_str).c_str(),
                shape_str(t.shape).c_str(), need.c_str());
        }
      }
      t.data = data + b;
      t.nbytes = size_t(nbytes);
      by_name_.emplace(name, tensors_.size());
      tensors_.push_back(std::move(t));
    }

    // The tensors must tile the data section exactly, as the reference reader requires: in offset
    // order each one starts where the previous one ended, and the last one ends at the end of the
    // file. A header length that is off by a byte (every tensor shifted), a hole or bytes after the
    // data all mean the file is not what its header says.
    std::vector<size_t> order(tensors_.size());
    for (size_t k = 0; k < order.size(); k++) order[k] = k;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      const TensorInfo &x = tensors_[a], &y = tensors_[b];
      return x.data != y.data ? x.data < y.data : x.nbytes < y.nbytes;
    });
    const uint8_t *at = data;
    const TensorInfo *prev = nullptr;
    for (size_t k : order) {
      const TensorInfo &t = tensors_[k];
      if (t.data < at)
        raise(KF_ERR_FORMAT, "cannot %s: %s: tensors %s and %s overlap in the data section", action, p,
              shown(prev->name).c_str(), shown(t.name).c_str());
      if (t.data > at)
        raise(KF_ERR_FORMAT,
              "cannot %s: %s: tensor %s starts at data offset %llu, but the previous tensor ends at %llu (a hole in "
              "the data section; is the header length wrong?)",
              action, p, shown(t.name).c_str(), static_cast<unsigned long long>(t.data - data),
              static_cast<unsigned long long>(at - data));
      at = t.data + t.nbytes;
      prev = &t;
    }
    if (at != data + data_len)
      raise(KF_ERR_FORMAT,
            "cannot %s: %s: the tensors end at data offset %llu, but the data section holds %llu bytes (trailing "
            "bytes, or a wrong header length)",
            action, p, static_cast<unsigned long long>(at - data), static_cast<unsigned long long>(data_len));
  } catch (...) {
    release();
    throw;
  }
}

void SafetensorsFile::release() noexcept {
  if (base_) {
    if (mapped_) unwatch_mapping(base_);
    ::munmap(base_, alloc_);  // the file's mapping, or the anonymous one it was read into
  }
  base_ = nullptr;
  alloc_ = 0;
  file_off_ = 0;
  mapped_ = false;
}

SafetensorsFile::~SafetensorsFile() { release(); }

SafetensorsFile::SafetensorsFile(SafetensorsFile &&o) noexcept
    : path_(std::move(o.path_)), base_(o.base_), alloc_(o.alloc_), file_off_(o.file_off_), mapped_(o.mapped_),
      size_(o.size_), header_len_(o.header_len_), tensors_(std::move(o.tensors_)), by_name_(std::move(o.by_name_)),
      metadata_(std::move(o.metadata_)) {
  o.base_ = nullptr;
  o.alloc_ = 0;
  o.mapped_ = false;
}

SafetensorsFile &SafetensorsFile::operator=(SafetensorsFile &&o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    base_ = o.base_;
    alloc_ = o.alloc_;
    file_off_ = o.file_off_;
    mapped_ = o.mapped_;
    size_ = o.size_;
    header_len_ = o.header_len_;
    tensors_ = std::move(o.tensors_);
    by_name_ = std::move(o.by_name_);
    metadata_ = std::move(o.metadata_);
    o.base_ = nullptr;
    o.alloc_ = 0;
    o.mapped_ = false;
  }
  return *this;
}

const TensorInfo *SafetensorsFile::find(const std::string &name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const std::string *SafetensorsFile::metadata_value(const std::string &key) const {
  for (const auto &kv : metadata_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// TensorIndex

void TensorIndex::add(const TensorInfo &t) {
  by_name_.emplace(t.name, tensors_.size());
  tensors_.push_back(t);
  total_bytes_ += int64_t(t.nbytes);
}

const TensorInfo *TensorIndex::find(const std::string &name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

TensorIndex TensorIndex::open_file(const std::string &path, bool use_mmap, const char *action) {
  TensorIndex ix;
  ix.files_.emplace_back(path, use_mmap, action);
  for (const TensorInfo &t : ix.files_.back().tensors()) ix.add(t);
  return ix;
}

TensorIndex TensorIndex::open_dir(const std::string &dir, bool use_mmap, const char *action) {
  if (!action) action = "load model";
  if (dir.find('\0') != std::string::npos)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: path contains a NUL byte", action);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) raise(KF_ERR_IO, "cannot %s: %s does not exist", action, dir.c_str());
    raise(KF_ERR_IO, "cannot %s: cannot stat %s: %s", action, dir.c_str(), errno_text(err).c_str());
  }
  if (!S_ISDIR(st.st_mode)) raise(KF_ERR_IO, "cannot %s: %s is not a directory", action, dir.c_str());

  const std::string single = join_path(dir, "model.safetensors");
  if (::stat(single.c_str(), &st) == 0 || errno != ENOENT) return open_file(single, use_mmap, action);

  const std::string index_path = join_path(dir, "model.safetensors.index.json");
  if (::stat(index_path.c_str(), &st) != 0 && errno == ENOENT)
    raise(KF_ERR_IO, "cannot %s: %s has neither model.safetensors nor model.safetensors.index.json", action,
          dir.c_str());
  const char *ip = index_path.c_str();
  const Json index = read_json_file(index_path, action);
  if (!index.is_object()) raise(KF_ERR_FORMAT, "cannot %s: %s is %s, not a JSON object", action, ip, index.type_name());
  const Json *wm = index.find("weight_map");
  if (!wm || !wm->is_object())
    raise(KF_ERR_FORMAT, "cannot %s: %s has no \"weight_map\" object", action, ip);
  if (wm->size() == 0) raise(KF_ERR_FORMAT, "cannot %s: %s: weight_map is empty", action, ip);

  TensorIndex ix;
  std::unordered_map<std::string, size_t> shard_file;  // shard name -> index in files_
  for (const Json::Member &m : wm->members()) {
    const std::string tn = shown(m.first);
    if (!m.second.is_string())
      raise(KF_ERR_FORMAT, "cannot %s: %s: weight_map entry of tensor %s is %s, not a file name", action, ip,
            tn.c_str(), m.second.type_name());
    const std::string &shard = m.second.as_string();
    const std::string sn = shown(shard);
    if (shard.empty() || shard == "." || shard.find('/') != std::string::npos ||
        shard.find('\\') != std::string::npos || shard.find("..") != std::string::npos ||
        shard.find('\0') != std::string::npos)
      raise(KF_ERR_FORMAT,
            "cannot %s: %s maps tensor %s to \"%s\", which is not a plain file name inside the model folder", action,
            ip, tn.c_str(), sn.c_str());
    auto it = shard_file.find(shard);
    if (it == shard_file.end()) {
      const std::string shard_path = join_path(dir, shard);
      if (::stat(shard_path.c_str(), &st) != 0 && errno == ENOENT)
        raise(KF_ERR_IO, "cannot %s: shard %s listed in %s does not exist", action, shard_path.c_str(), ip);
      ix.files_.emplace_back(shard_path, use_mmap, action);
      it = shard_file.emplace(shard, ix.files_.size() - 1).first;
    }
    const SafetensorsFile &f = ix.files_[it->second];
    const TensorInfo *t = f.find(m.first);
    if (!t)
      raise(KF_ERR_FORMAT, "cannot %s: %s maps tensor %s to %s, but that file does not contain it", action, ip,
            tn.c_str(), f.path().c_str());
    ix.add(*t);
  }
  // A tensor in a shard that the weight_map does not list (or lists under another shard) would be
  // silently left out; the index and its shards must agree.
  for (const SafetensorsFile &f : ix.files_) {
    for (const TensorInfo &t : f.tensors()) {
      const TensorInfo *listed = ix.find(t.name);
      if (!listed)
        raise(KF_ERR_FORMAT, "cannot %s: shard %s holds tensor %s, which the weight_map of %s does not list", action,
              f.path().c_str(), shown(t.name).c_str(), ip);
      if (listed->file != f.path())
        raise(KF_ERR_FORMAT, "cannot %s: tensor %s is in both %s and %s; the weight_map of %s lists the latter",
              action, shown(t.name).c_str(), f.path().c_str(), listed->file.c_str(), ip);
    }
  }
  return ix;
}

void TensorIndex::drop_data_except(const std::vector<const void *> &in_use) noexcept {
  for (SafetensorsFile &f : files_)
    if (std::none_of(in_use.begin(), in_use.end(), [&](const void *p) { return f.holds(p); })) f.drop_data();
}

// ---------------------------------------------------------------------------------------------
// Mapped files and SIGBUS
//
// A mapped file that another process truncates faults (SIGBUS) at the next read of a page past its
// new end. Any thread of any kernel may make that read, so it cannot become an error of one call:
// the process stops. This handler makes it say why, naming the file, instead of dying silently;
// faults elsewhere go on to whatever handler was installed before. Only use_mmap files are watched
// (models load without mmap by default).

namespace {

struct WatchedMapping {
  std::atomic<int> used{0};
  std::atomic<uintptr_t> begin{0}, end{0};  // begin is published last: nonzero means complete
  char path[512];
};
constexpr int kMaxWatched = 256;  // beyond this, mappings still work but fault without the message
WatchedMapping g_watched[kMaxWatched];
struct sigaction g_previous_sigbus;
std::once_flag g_sigbus_installed;

void write_stderr(const char *s, size_t n) noexcept {
  while (n > 0) {
    const ssize_t w = ::write(2, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    s += w;
    n -= size_t(w);
  }
}

void default_sigbus() noexcept {
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGBUS, &dfl, nullptr);
}

// Async-signal-safe: atomics, write(2) and sigaction(2) only.
void on_sigbus(int sig, siginfo_t *info, void *context) {
  const int saved_errno = errno;
  const uintptr_t at = reinterpret_cast<uintptr_t>(info ? info->si_addr : nullptr);
  for (WatchedMapping &w : g_watched) {
    const uintptr_t b = w.begin.load(std::memory_order_acquire);
    if (b == 0 || at < b || at >= w.end.load(std::memory_order_relaxed)) continue;
    static const char head[] = "kvfold: fatal: ";
    static const char tail[] =
        " was truncated or replaced by another process while kvfold had it memory-mapped (loaded with mmap); "
        "its weights are gone, so the process stops (SIGBUS). Load models without mmap (the default) to keep "
        "the weights in memory the library owns.\n";
    write_stderr(head, sizeof head - 1);
    write_stderr(w.path, ::strnlen(w.path, sizeof w.path));
    write_stderr(tail, sizeof tail - 1);
    default_sigbus();  // the read faults again on return, and the default action stops the process
    errno = saved_errno;
    return;
  }
  errno = saved_errno;
  if (g_previous_sigbus.sa_flags & SA_SIGINFO) {
    if (g_previous_sigbus.sa_sigaction) return g_previous_sigbus.sa_sigaction(sig, info, context);
  } else if (g_previous_sigbus.sa_handler != SIG_DFL && g_previous_sigbus.sa_handler != SIG_IGN) {
    return g_previous_sigbus.sa_handler(sig);
  }
  default_sigbus();  // a fault cannot be ignored: returning re-runs the read under the default action
}

void watch_mapping(const void *base, size_t len, const std::string &path) noexcept {
  std::call_once(g_sigbus_installed, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous_sigbus);
  });
  for (WatchedMapping &w : g_watched) {
    int expected = 0;
    if (!w.used.compare_exchange_strong(expected, 1)) continue;
    const size_t n = std::min(path.size(), sizeof w.path - 1);
    std::memcpy(w.path, path.data(), n);
    w.path[n] = '\0';
    w.end.store(reinterpret_cast<uintptr_t>(base) + len, std::memory_order_relaxed);
    w.begin.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
    return;
  }
}

void unwatch_mapping(const void *base) noexcept {
  for (WatchedMapping &w : g_watched) {
    if (w.begin.load(std::memory_order_acquire) != reinterpret_cast<uintptr_t>(base)) continue;
    w.begin.store(0, std::memory_order_release);
    w.end.store(0, std::memory_order_relaxed);
    w.used.store(0, std::memory_order_release);
    return;
  }
}

}  // namespace

}  // namespace kf
