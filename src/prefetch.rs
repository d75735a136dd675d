//! Prefetch hints for the request path: the CPU is asked to bring a line into cache before it
//! is read or written, where perf showed a first access stalling on a cold line (the log
//! writer's buffer, the spare span records). Hints only: nothing is read, nothing can fault,
//! and on other architectures they do nothing.

/// Brings the line holding `at` into cache for reading (the spare span records).
#[cfg(all(feature = "otel", target_arch = "x86_64", target_feature = "sse"))]
pub(crate) use safe_arch::prefetch_t0 as read;

/// Brings the line holding `at` into cache for writing (`prefetchw` where the target has it,
/// otherwise a read prefetch; the log writer's buffer).
#[cfg(all(feature = "log", target_arch = "x86_64", target_feature = "sse"))]
pub(crate) use safe_arch::prefetch_et0 as write;

/// Brings the line holding `at` into cache for reading (nothing on this architecture).
#[cfg(all(
    feature = "otel",
    not(all(target_arch = "x86_64", target_feature = "sse"))
))]
pub(crate) fn read<T>(_at: &T) {}

/// Brings the line holding `at` into cache for writing (nothing on this architecture).
#[cfg(all(
    feature = "log",
    not(all(target_arch = "x86_64", target_feature = "sse"))
))]
pub(crate) fn write<T>(_at: &T) {}
