//! Who owns a function: the Go runtime, the standard library, the program's main
//! module or one of its dependencies. Derived from the package path in the symbol
//! name and the modules the build info lists, not from a list of packages.
//!
//! - The package path is the symbol up to the first `.` after its last `/` (before
//!   any `[` of a generic instantiation); the linker escapes dots in a path's last
//!   element as `%2e` (`gopkg.in/yaml%2ev3.Unmarshal`), so the rule is exact.
//! - A path under a module of the build info is that module's: the main module (the
//!   `mod` line, `main` itself) or a dependency (`dep` lines). Vendored builds keep
//!   the original import paths, and `-trimpath` changes file names, not symbols.
//! - Otherwise a path whose first element has no dot is the standard library's: Go
//!   reserves such paths for it (`go help importpath`; a user module without a dot
//!   is in the build info, so it was matched above). `runtime` and its internal
//!   packages are the runtime's.
//! - A GOPATH-mode build (Debian packages Go 1.19 programs this way) lists no
//!   modules: the main package's path (`path` line) then stands for the main module,
//!   cut before a `/cmd/` element (Go's layout for a repository's commands:
//!   `github.com/syncthing/syncthing/cmd/syncthing` is syncthing's), and other
//!   dotted paths are dependencies of unknown module.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Who owns a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// The runtime itself, and compiler-generated code (`type:.eq.*`, `go:*`).
    Runtime,
    /// The standard library (including its vendored `vendor/golang.org/x/...`).
    Std,
    /// The program's main module.
    Main,
    /// A dependency of the main module.
    Dependency,
    /// No Go package: C (cgo) or assembly without one.
    Foreign,
}

impl Owner {
    /// Code the program's authors (or their dependencies') can change.
    pub fn is_program(self) -> bool {
        matches!(self, Owner::Main | Owner::Dependency)
    }
}

/// Who owns what in one binary.
#[derive(Clone, Debug, Default)]
pub struct Ownership {
    /// Module paths, the main module first (may be empty).
    modules: Vec<String>,
    /// The main package's import path (`path` line) up to any `/cmd/` element, for
    /// GOPATH-mode builds.
    main_package: Option<String>,
}

/// A function's owner and, for program code, its module (when the build info names it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned<'a> {
    pub owner: Owner,
    pub module: Option<&'a str>,
}

impl Ownership {
    pub fn new(modules: &[String], main_package: Option<&str>) -> Ownership {
        let root = |p: &str| p.split_once("/cmd/").map_or(p, |(r, _)| r).to_owned();
        Ownership {
            modules: modules.to_vec(),
            main_package: main_package.map(root),
        }
    }

    /// The owner of the function named `symbol`.
    pub fn of(&self, symbol: &str) -> Owned<'_> {
        let owned = |owner, module| Owned { owner, module };
        if symbol.starts_with("type:") || symbol.starts_with("type..") || symbol.starts_with("go:")
        {
            return owned(Owner::Runtime, None);
        }
        let Some(pkg) = package_of(symbol) else {
            return owned(Owner::Foreign, None);
        };
        let pkg = unescape(pkg);
        let pkg = pkg.as_ref();
        if pkg == "main" {
            return owned(Owner::Main, self.modules.first().map(String::as_str));
        }
        let under = |m: &str| {
            pkg.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        // The longest module containing the package: nested modules (a/b inside a).
        if let Some((i, m)) = self
            .modules
            .iter()
            .enumerate()
            .filter(|(_, m)| under(m))
            .max_by_key(|(_, m)| m.len())
        {
            let owner = if i == 0 {
                Owner::Main
            } else {
                Owner::Dependency
            };
            return owned(owner, Some(m.as_str()));
        }
        if self.modules.is_empty() {
            if let Some(p) = self.main_package.as_deref().filter(|p| under(p)) {
                return owned(Owner::Main, Some(p));
            }
        }
        let first = pkg.split('/').next().unwrap_or(pkg);
        if first.contains('.') {
            owned(Owner::Dependency, None)
        } else if pkg == "runtime"
            || pkg.starts_with("runtime/internal/")
            || pkg.starts_with("internal/runtime/")
        {
            owned(Owner::Runtime, None)
        } else {
            owned(Owner::Std, None)
        }
    }
}

/// The package path of a Go symbol ("net/http.(*conn).serve" → "net/http"), still
/// escaped; None for a name with no package (C functions).
pub fn package_of(symbol: &str) -> Option<&str> {
    let head = symbol.split('[').next().unwrap_or(symbol);
    let last_slash = head.rfind('/').map_or(0, |i| i + 1);
    let dot = head[last_slash..].find('.')?;
    let pkg = &head[..last_slash + dot];
    (!pkg.is_empty()).then_some(pkg)
}

/// A symbol's package path with its `%xx` escapes decoded.
fn unescape(escaped: &str) -> Cow<'_, str> {
    if !escaped.contains('%') {
        return Cow::Borrowed(escaped);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = escaped.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ownership() -> Ownership {
        Ownership::new(
            &[
                "example.com/svc".into(),
                "github.com/acme/lib".into(),
                "github.com/acme/lib/v2".into(),
                "gopkg.in/yaml.v3".into(),
                "myorg".into(),
            ],
            Some("example.com/svc/cmd/svc"),
        )
    }

    #[test]
    fn package_paths() {
        assert_eq!(package_of("net/http.(*conn).serve"), Some("net/http"));
        assert_eq!(package_of("main.main.func1"), Some("main"));
        assert_eq!(
            package_of("gopkg.in/yaml%2ev3.(*parser).parse"),
            Some("gopkg.in/yaml%2ev3")
        );
        assert_eq!(
            package_of("example.com/a.Map[go.shape.int].Get"),
            Some("example.com/a")
        );
        assert_eq!(
            package_of("github.com/x/y.(*T[github.com/z/w.U]).M"),
            Some("github.com/x/y")
        );
        assert_eq!(package_of("x_cgo_thread_start"), None);
        assert_eq!(package_of(""), None);
        assert_eq!(package_of(".x"), None);
    }

    #[test]
    fn owners_from_the_build_info() {
        let o = ownership();
        let of = |s| o.of(s).owner;
        assert_eq!(of("main.metricsMiddleware.func1"), Owner::Main);
        assert_eq!(of("example.com/svc/internal/h.(*S).Serve"), Owner::Main);
        assert_eq!(of("github.com/acme/lib.Do"), Owner::Dependency);
        assert_eq!(
            o.of("github.com/acme/lib/v2/x.Do").module,
            Some("github.com/acme/lib/v2")
        );
        assert_eq!(
            o.of("gopkg.in/yaml%2ev3.Unmarshal").module,
            Some("gopkg.in/yaml.v3")
        );
        // A main-module-like prefix is not a match: example.com/svcx is another module.
        assert_eq!(of("example.com/svcx.F"), Owner::Dependency);
        // A module without a dot is found through the build info, not taken for std.
        assert_eq!(of("myorg/pkg.F"), Owner::Dependency);
        assert_eq!(of("net.(*netFD).accept"), Owner::Std);
        assert_eq!(of("net/http/pprof.handler.ServeHTTP"), Owner::Std);
        assert_eq!(of("expvar.expvarHandler"), Owner::Std);
        assert_eq!(of("runtime/debug.FreeOSMemory"), Owner::Std);
        assert_eq!(of("vendor/golang.org/x/net/http2/hpack.F"), Owner::Std);
        assert_eq!(of("runtime.mProf_Malloc"), Owner::Runtime);
        assert_eq!(of("internal/runtime/maps.F"), Owner::Runtime);
        assert_eq!(of("type:.eq.main.T"), Owner::Runtime);
        assert_eq!(of("crosscall2"), Owner::Foreign);
    }

    #[test]
    fn gopath_builds_use_the_main_package() {
        let o = Ownership::new(&[], Some("github.com/rclone/rclone"));
        assert_eq!(
            o.of("github.com/rclone/rclone/fs/rc.rcMemStats").owner,
            Owner::Main
        );
        assert_eq!(
            o.of("github.com/spf13/cobra.(*Command).Execute").owner,
            Owner::Dependency
        );
        assert_eq!(o.of("os.newFile").owner, Owner::Std);
        let o = Ownership::new(&[], Some("github.com/syncthing/syncthing/cmd/syncthing"));
        assert_eq!(
            o.of("github.com/syncthing/syncthing/lib/api.(*service).getSystemStatus")
                .owner,
            Owner::Main
        );
        assert_eq!(
            o.of("github.com/syncthing/notify.Watch").owner,
            Owner::Dependency
        );
    }
}
