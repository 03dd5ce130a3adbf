//! Who owns a function: code the user can change, or the runtime and standard
//! library, whose calls never make findings on their own.

/// Whether `function` (a symbol name) is code a user can change.
pub fn is_user_code(function: &str) -> bool {
    const NOT_USER: &[&str] = &[
        "runtime.",
        "runtime/",
        "net/http/pprof.",
        "expvar.",
        "internal/",
        "sync.",
        "os.",
    ];
    !NOT_USER.iter().any(|p| function.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_library_is_not_user_code() {
        assert!(is_user_code("main.metricsMiddleware.func1"));
        assert!(is_user_code("github.com/acme/svc/metrics.Export"));
        assert!(!is_user_code("net/http/pprof.Index"));
        assert!(!is_user_code("runtime/debug.FreeOSMemory"));
    }
}
