//! A stripped Go binary of more than 100 MB for row 4, generated from the standard
//! library only (no module proxy): [`PACKAGES`] generated packages of [`FUNCS`]
//! functions each (sizeable bodies: strings, strconv, fmt, maps, loops; all kept
//! linked through a table), plus a main package that imports some fifty standard
//! packages. Built once per machine and Go version (3–7 minutes on 2 cores, with
//! load) and cached under the cache dir (`DETECTOR_CACHE`, default ~/.cache/detector),
//! with its build time; the sources and the build's own GOCACHE are removed afterwards.
//!
//! The program speaks hitbench's protocol: prints `ready pid=N` and runs until EOF on
//! stdin.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Result;

use super::{go_cmd, thousands};
use crate::{run_cmd, setup};

/// Generated packages.
const PACKAGES: usize = 56;
/// Functions per generated package.
pub const FUNCS: usize = 1000;
/// Bump when the generated program changes: a new cache entry is built.
const GENERATION: u32 = 1;

pub struct Big {
    pub path: PathBuf,
    /// Err: why it could not be built.
    pub info: Result<BuildInfo, String>,
}

pub struct BuildInfo {
    /// Wall time of `go build` (generation excluded), when it was built.
    pub build_s: f64,
    /// Built by this run (false: taken from the cache).
    pub built_now: bool,
    /// Disk the build used at its peak (sources, GOCACHE, output), MB.
    pub build_disk_mb: f64,
}

impl Big {
    pub fn describe(&self) -> String {
        format!(
            "{} generated packages × {} functions + ~50 standard packages",
            PACKAGES,
            thousands(FUNCS as u64)
        )
    }
}

/// The cached binary, built first when missing.
pub fn binary(go: &setup::GoTool) -> Big {
    let dir = setup::cache_dir()
        .join("bench")
        .join(format!("big-go{}-g{GENERATION}", go.version));
    let path = dir.join("bigbench");
    let info = match cached(&dir, &path) {
        Some(info) => Ok(info),
        None => build(go, &dir, &path).map_err(|e| format!("{e:#}")),
    };
    Big { path, info }
}

fn cached(dir: &Path, path: &Path) -> Option<BuildInfo> {
    let meta = fs::read_to_string(dir.join("build.txt")).ok()?;
    if !path.exists() {
        return None;
    }
    let get = |k: &str| super::field(&meta, k);
    Some(BuildInfo {
        build_s: get("build_s")?,
        built_now: false,
        build_disk_mb: get("build_disk_mb").unwrap_or(f64::NAN),
    })
}

fn build(go: &setup::GoTool, dir: &Path, path: &Path) -> Result<BuildInfo> {
    eprintln!(
        "bench: generating and building a 100+ MB stripped Go binary with Go {} \
         (once per machine; 3–7 minutes on 2 cores)",
        go.version
    );
    let tmp = dir.parent().expect("in the cache dir").join(format!(
        "{}.build",
        dir.file_name().expect("named").to_string_lossy()
    ));
    let _ = fs::remove_dir_all(&tmp);
    let src = tmp.join("src");
    generate(&src)?;
    fs::create_dir_all(dir)?;
    let out = path.with_extension("tmp");
    let t = Instant::now();
    let built = run_cmd(
        go_cmd(go)
            .args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .env("GOCACHE", tmp.join("gocache"))
            .env("CGO_ENABLED", "0"),
    );
    let build_s = t.elapsed().as_secs_f64();
    let disk = dir_size(&tmp) + fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let _ = fs::remove_dir_all(&tmp);
    built?;
    fs::rename(&out, path)?;
    let build_disk_mb = disk as f64 / 1e6;
    fs::write(
        dir.join("build.txt"),
        format!("build_s={build_s:.1} build_disk_mb={build_disk_mb:.0}\n"),
    )?;
    eprintln!(
        "bench: built {} ({:.1} MB) in {build_s:.0} s",
        path.display(),
        fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
    );
    Ok(BuildInfo {
        build_s,
        built_now: true,
        build_disk_mb,
    })
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Standard packages main imports, and one exported function or method of each that
/// it keeps linked.
const STD: &[(&str, &str)] = &[
    ("archive/tar", "tar.NewReader"),
    ("archive/zip", "zip.NewReader"),
    ("compress/bzip2", "bzip2.NewReader"),
    ("compress/flate", "flate.NewReader"),
    ("compress/gzip", "gzip.NewReader"),
    ("compress/lzw", "lzw.NewReader"),
    ("compress/zlib", "zlib.NewReader"),
    ("crypto/aes", "aes.NewCipher"),
    ("crypto/ecdsa", "ecdsa.SignASN1"),
    ("crypto/ed25519", "ed25519.Sign"),
    ("crypto/rsa", "rsa.SignPKCS1v15"),
    ("crypto/sha512", "sha512.New"),
    ("crypto/tls", "tls.Dial"),
    ("crypto/x509", "x509.ParseCertificate"),
    ("database/sql", "sql.Open"),
    ("debug/dwarf", "dwarf.New"),
    ("debug/elf", "elf.Open"),
    ("debug/gosym", "gosym.NewTable"),
    ("debug/macho", "macho.Open"),
    ("debug/pe", "pe.Open"),
    ("encoding/asn1", "asn1.Marshal"),
    ("encoding/csv", "csv.NewReader"),
    ("encoding/gob", "gob.NewEncoder"),
    ("encoding/json", "json.Marshal"),
    ("encoding/xml", "xml.Marshal"),
    ("go/ast", "ast.Print"),
    ("go/format", "format.Source"),
    ("go/parser", "parser.ParseFile"),
    ("go/types", "(*types.Config).Check"),
    ("html/template", "template.New"),
    ("image/gif", "gif.Decode"),
    ("image/jpeg", "jpeg.Decode"),
    ("image/png", "png.Decode"),
    ("log/slog", "slog.New"),
    ("math/big", "big.NewInt"),
    ("mime/multipart", "multipart.NewReader"),
    ("net/http", "http.ListenAndServe"),
    ("net/http/httptest", "httptest.NewServer"),
    ("net/mail", "mail.ParseAddress"),
    ("net/rpc", "rpc.NewServer"),
    ("net/smtp", "smtp.Dial"),
    ("regexp", "regexp.MustCompile"),
    ("text/template", "(*ttemplate.Template).Execute"),
    ("runtime/pprof", "pprof.StartCPUProfile"),
    ("runtime/trace", "trace.Start"),
    ("runtime/debug", "debug.FreeOSMemory"),
    ("net/http/pprof", "httppprof.Index"),
];

fn generate(src: &Path) -> Result<()> {
    fs::create_dir_all(src)?;
    fs::write(src.join("go.mod"), "module bigbench\n\ngo 1.22\n")?;
    let mut main = String::from(
        "// Generated by cargo xtask bench: a large Go binary for detector's analysis\n\
         // and attach benchmark. Prints `ready pid=N` and runs until EOF on stdin.\n\
         package main\n\nimport (\n\t\"bufio\"\n\t\"fmt\"\n\t\"os\"\n",
    );
    for (pkg, _) in STD {
        let alias = match *pkg {
            "text/template" => "ttemplate ",
            "net/http/pprof" => "httppprof ",
            _ => "",
        };
        writeln!(main, "\t{alias}\"{pkg}\"")?;
    }
    for p in 0..PACKAGES {
        writeln!(main, "\tp{p:03} \"bigbench/p{p:03}\"")?;
    }
    main.push_str(")\n\n// keep links every imported package in.\nvar keep = []any{\n");
    for (_, f) in STD {
        writeln!(main, "\t{f},")?;
    }
    main.push_str("}\n\nfunc main() {\n\tn := len(keep)\n");
    for p in 0..PACKAGES {
        writeln!(main, "\tn += len(p{p:03}.Table)")?;
    }
    main.push_str(
        "\tif len(os.Args) > 1 {\n\t\ty, s := p000.Table[0](n, os.Args[1])\n\t\tfmt.Println(n, y, s)\n\t}\n\
         \tfmt.Printf(\"ready pid=%d\\n\", os.Getpid())\n\
         \tr := bufio.NewReader(os.Stdin)\n\
         \tfor {\n\t\tif _, err := r.ReadString('\\n'); err != nil {\n\t\t\treturn\n\t\t}\n\t}\n}\n",
    );
    fs::write(src.join("main.go"), main)?;
    for p in 0..PACKAGES {
        let dir = src.join(format!("p{p:03}"));
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("gen.go"), package(p))?;
    }
    Ok(())
}

/// One generated package: FUNCS functions with distinct constants, and a table of
/// them (so the linker keeps every one).
fn package(p: usize) -> String {
    let mut s = format!(
        "// Generated by cargo xtask bench.\npackage p{p:03}\n\nimport (\n\t\"fmt\"\n\
         \t\"strconv\"\n\t\"strings\"\n)\n"
    );
    for f in 0..FUNCS {
        let k = p * FUNCS + f;
        let _ = write!(
            s,
            r#"
func F{f:05}(x int, s string) (int, string) {{
	y := x*{a} + {k}
	switch x % 7 {{
	case 0:
		s = strings.Repeat(s, {b})
	case 1:
		s = strconv.Itoa(y) + s + "{k:x}"
	case 2:
		s = fmt.Sprintf("%d-%s-%d-{k}", x, s, y)
	case 3:
		s = strings.ToUpper(s) + strings.TrimSpace(" {k} ")
	case 4:
		y, _ = strconv.Atoi(s)
	default:
		s = strings.ReplaceAll(s, "{c}", "{d}")
	}}
	m := map[string]int{{"a{k}": x, "b": y, s: {e}}}
	for key, v := range m {{
		y += len(key) * v
	}}
	var arr [8]int
	for i := range arr {{
		arr[i] = y ^ (i + {g})
		y += arr[(i*3+{h})%8]
	}}
	if y%{j} == 0 {{
		s = strings.Join([]string{{s, "{k}", strconv.Itoa(arr[{l}])}}, ",")
	}}
	return y, s
}}
"#,
            a = k % 1000 + 3,
            b = k % 3 + 1,
            c = k % 10,
            d = k % 7,
            e = k % 97,
            g = k % 13,
            h = k % 5,
            j = k % 11 + 2,
            l = k % 8,
        );
    }
    s.push_str(
        "\n// Table keeps every function linked.\nvar Table = []func(int, string) (int, string){\n",
    );
    for f in 0..FUNCS {
        let _ = writeln!(s, "\tF{f:05},");
    }
    s.push_str("}\n");
    s
}
