// api_guard.h — what every C entry point shares: the thread-local error message, the wrapper that
// turns exceptions into a kf_status, the copy of the message into a control block, argument checks.
#pragma once

#include <cstdio>
#include <new>
#include <stdexcept>
#include <string>

#include "common.h"

namespace kf::api {

// The message kf_last_error returns: one per thread, shared by every translation unit.
inline thread_local std::string g_last_error;

// Runs fn, turning every exception into a status and the thread-local message; never lets one escape.
template <class F>
kf_status guarded(const char *what, F &&fn) {
  try {
    fn();
    return KF_OK;
  } catch (const kf::Error &e) {
    g_last_error = e.what();
    return e.code;
  } catch (const std::bad_alloc &) {
    g_last_error = std::string("cannot ") + what + ": out of memory";
    return KF_ERR_OUT_OF_MEMORY;
  } catch (const std::length_error &) {
    g_last_error = std::string("cannot ") + what + ": out of memory (request too large)";
    return KF_ERR_OUT_OF_MEMORY;
  } catch (const std::exception &e) {
    g_last_error = std::string("cannot ") + what + ": internal error: " + e.what();
    return KF_ERR_INTERNAL;
  } catch (...) {
    g_last_error = std::string("cannot ") + what + ": internal error";
    return KF_ERR_INTERNAL;
  }
}

// Copies the failure message into the control block, for callers on another thread.
inline kf_status report(kf_control *ctl, kf_status st) {
  if (ctl) {
    if (st == KF_OK) ctl->error[0] = 0;
    else std::snprintf(ctl->error, sizeof ctl->error, "%s", g_last_error.c_str());
  }
  return st;
}

}  // namespace kf::api

#define KF_REQUIRE(cond, what, ...) \
  do {                              \
    if (!(cond)) kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot " what ": " __VA_ARGS__); \
  } while (0)
