//! Self-contained images: everything a clone can write lives inside its data directory.
//!
//! A data directory may reach outside itself: a tablespace is a symlink `pg_tblspc/<oid>`
//! to a directory elsewhere, `pg_wal` or a configuration file may be a symlink, and a base
//! backup not yet started names its tablespaces' places in `tablespace_map`. A copy keeps
//! those absolute paths, so a server started on the copy (to prepare it, or as a clone)
//! would write into the source's files. Before any server starts on a copy, this module
//! brings what lies outside into it:
//!
//! ```text
//! pg_tblspc/<oid> -> ../thinclone_tablespaces/<oid>        a relative symlink
//! thinclone_tablespaces/<oid>/PG_<major>_<catversion>/…    the tablespace's files of this server
//! ```
//!
//! A relative link resolves inside whatever directory the image or a clone is at (a cowfs
//! mount, a reflink copy, a copy). Only the tablespace's directory of this server's version
//! is copied: others beside it (left by `pg_upgrade`) belong to other servers. Any other
//! symlink that leads outside (`pg_wal`, a configuration file) is replaced by a copy of what
//! it points at, in its place. What cannot be brought in is refused with an error naming it:
//! a dangling link, a relative link that climbs out of the directory (what it pointed at in
//! the source is unknown), a link to something that is neither a file nor a directory, a
//! target that itself holds symlinks.
//!
//! Live copies (`pg_basebackup`) get the same layout from `--tablespace-mapping`;
//! [`relink_inside`] then makes their links relative.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use engine::{Error, Result, User};

/// The directory of an image that holds its tablespaces' files.
pub(crate) const TABLESPACES_DIR: &str = "thinclone_tablespaces";
/// How many symlinks a path may pass through, as Linux allows.
const MAX_LINK_HOPS: usize = 40;
/// The suffix of a copy under way, beside its final place.
const PARTIAL: &str = ".thinclone-partial";

/// Where the files of tablespace `oid` live inside a data directory.
pub(crate) fn tablespace_home(data_dir: &Path, oid: &str) -> PathBuf {
    data_dir.join(TABLESPACES_DIR).join(oid)
}

/// What `pg_tblspc/<oid>` points at: relative, so that it resolves in any copy.
pub(crate) fn tablespace_link(oid: &str) -> PathBuf {
    Path::new("..").join(TABLESPACES_DIR).join(oid)
}

/// Whether `name` is a tablespace's oid, as `pg_tblspc` and `tablespace_map` name them.
fn is_oid(name: &OsStr) -> bool {
    !name.is_empty() && name.len() <= 10 && name.as_bytes().iter().all(u8::is_ascii_digit)
}

/// Why a copy cannot be made self-contained; a mistake in the source, or a source that must
/// be taken another way.
fn refuse(message: String) -> Error {
    Error::BadSource(message)
}

/// What to say of a failed copy: a full disk, or the error itself.
fn copy_failed(what: String, e: sys::Error) -> Error {
    if e.is_disk_full() {
        Error::DiskFull { what, detail: e.to_string() }
    } else {
        Error::Other(format!("{what}: {e}"))
    }
}

/// Makes the copy at `data_dir` self-contained, as the module says. `version_dir` is the
/// name of this server's directory in a tablespace (`PG_15_202209061`). When `live` names
/// why what lies outside is changing now (the copy is a snapshot of a server that still
/// runs), bringing anything in is refused: a copy of it made now would not be from the
/// instant of the rest. Files brought in are given to `user` when this process is root.
pub(crate) fn make_self_contained(data_dir: &Path, version_dir: &str, user: &User, live: Option<&str>) -> Result<()> {
    let root = Root::new(data_dir)?;
    let check_live = |link: &Path, target: &Path| match live {
        Some(why) => Err(refuse(format!(
            "{} leads outside the copy, to {}, and {why}: a copy of {} made now would not be from the instant of \
             the rest. Take the image from the running server with --from-url, or from a copy of the stopped server",
            root.dir.join(link).display(),
            target.display(),
            target.display()
        ))),
        None => Ok(()),
    };

    // A base backup that was never started: recovery would make its tablespaces' links
    // from this file, pointing at their places in the source.
    let map_file = root.dir.join("tablespace_map");
    if let Some(entries) = read_tablespace_map(&map_file)? {
        for (oid, location) in entries {
            let link = Path::new("pg_tblspc").join(&oid);
            if !location.is_absolute() {
                continue;
            }
            match root.inside(&location) {
                Some(rel) => root.replace_link(&link, &root.relative_to(&link, &rel))?,
                None => {
                    check_live(&link, &location)?;
                    root.import_tablespace(&oid, &location, version_dir, user)?;
                }
            }
        }
        fs::remove_file(&map_file)?;
    }

    // Absolute links: into the copy they become relative, out of it their targets come in.
    for (link, target) in root.symlinks()? {
        if !target.is_absolute() {
            continue;
        }
        if let Some(rel) = root.inside(&target) {
            root.replace_link(&link, &root.relative_to(&link, &rel))?;
            continue;
        }
        check_live(&link, &target)?;
        let in_tblspc = link.parent() == Some(Path::new("pg_tblspc"));
        match link.file_name() {
            Some(oid) if in_tblspc && is_oid(oid) => {
                root.import_tablespace(&oid.to_string_lossy(), &target, version_dir, user)?
            }
            _ => root.import_in_place(&link, &target, user)?,
        }
    }

    // Relative links, now the only kind left, must not climb out.
    for (link, _) in root.symlinks()? {
        root.resolve_inside(&link)?;
    }
    Ok(())
}

/// Makes the absolute links inside `data_dir` that point into it relative (as
/// `pg_basebackup --tablespace-mapping` leaves them), and refuses any that leads outside: a
/// live copy must hold everything itself.
pub(crate) fn relink_inside(data_dir: &Path) -> Result<()> {
    let root = Root::new(data_dir)?;
    for (link, target) in root.symlinks()? {
        if !target.is_absolute() {
            root.resolve_inside(&link)?;
            continue;
        }
        match root.inside(&target) {
            Some(rel) => root.replace_link(&link, &root.relative_to(&link, &rel))?,
            None => {
                return Err(Error::Other(format!(
                    "the copy's {} points outside it, at {}: the source gained a tablespace while it was copied \
                     (pg_basebackup may have written into {} on this host); take the image again",
                    link.display(),
                    target.display(),
                    target.display()
                )))
            }
        }
    }
    Ok(())
}

/// A data directory being made self-contained.
struct Root {
    /// As given.
    dir: PathBuf,
    /// Its canonical path: links may name it either way.
    canonical: PathBuf,
}

impl Root {
    fn new(dir: &Path) -> Result<Root> {
        Ok(Root { dir: dir.to_owned(), canonical: fs::canonicalize(dir)? })
    }

    /// The path inside the root that an absolute `target` names, if it names one.
    fn inside(&self, target: &Path) -> Option<PathBuf> {
        let target = normalize(target)?;
        [&self.dir, &self.canonical].iter().find_map(|root| target.strip_prefix(root).ok().map(Path::to_owned))
    }

    /// The relative link target, from `link`'s directory, that names `target` (both relative
    /// to the root).
    fn relative_to(&self, link: &Path, target: &Path) -> PathBuf {
        let depth = link.parent().map_or(0, |p| p.components().count());
        let mut rel: PathBuf = std::iter::repeat_n("..", depth).collect();
        rel.push(target);
        rel
    }

    /// Every symlink under the root (not following any), with what it points at; paths are
    /// relative to the root.
    fn symlinks(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        let mut found = Vec::new();
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            for entry in fs::read_dir(self.dir.join(&rel))? {
                let entry = entry?;
                let kind = entry.file_type()?;
                let path = rel.join(entry.file_name());
                if kind.is_symlink() {
                    let target = fs::read_link(entry.path())?;
                    found.push((path, target));
                } else if kind.is_dir() {
                    todo.push(path);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Replaces the symlink `link` with one to `target`, in one rename.
    fn replace_link(&self, link: &Path, target: &Path) -> Result<()> {
        let path = self.dir.join(link);
        let tmp = with_suffix(&path, PARTIAL);
        remove_any(&tmp)?;
        symlink(target, &tmp)?;
        if let Ok(meta) = fs::symlink_metadata(&path) {
            // The new link keeps the old one's owner.
            use std::os::unix::fs::MetadataExt;
            if sys::user::running_as_root() {
                std::os::unix::fs::lchown(&tmp, Some(meta.uid()), Some(meta.gid()))?;
            }
        }
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Copies this server's directory of the tablespace at `location` into the copy, and
    /// points `pg_tblspc/<oid>` at it.
    fn import_tablespace(&self, oid: &str, location: &Path, version_dir: &str, user: &User) -> Result<()> {
        let link = Path::new("pg_tblspc").join(oid);
        let from = location.join(version_dir);
        match fs::symlink_metadata(&from) {
            Ok(m) if m.is_dir() => {}
            Ok(_) | Err(_) => {
                return Err(refuse(format!(
                    "the tablespace {oid} ({} in the source, at {}) has no directory {version_dir} for this server: \
                     it is not this server's tablespace, or it is missing",
                    link.display(),
                    location.display()
                )))
            }
        }
        let home = tablespace_home(&self.dir, oid);
        // What an interrupted preparation left.
        sys::tree::remove(&home)?;
        let tablespaces = self.dir.join(TABLESPACES_DIR);
        for dir in [&tablespaces, &home] {
            match fs::create_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e.into()),
                _ => {}
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            if sys::user::running_as_root() {
                std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))?;
            }
        }
        let what = format!("copying the tablespace {oid} from {} into the image", from.display());
        self.copy_in(&from, &home.join(version_dir), user, what)?;
        self.replace_link(&link, &tablespace_link(oid))?;
        tracing::info!(data_dir = %self.dir.display(), "the tablespace {oid} at {} is now inside the image", location.display());
        Ok(())
    }

    /// Replaces the symlink `link` with a copy of what it points at, outside the copy.
    fn import_in_place(&self, link: &Path, target: &Path, user: &User) -> Result<()> {
        let shown = self.dir.join(link);
        match fs::metadata(target) {
            Ok(m) if m.is_dir() || m.is_file() => {}
            Ok(_) => {
                return Err(refuse(format!(
                    "{} is a symbolic link to {}, which is neither a file nor a directory: remove it from the source",
                    shown.display(),
                    target.display()
                )))
            }
            Err(e) => {
                return Err(refuse(format!(
                    "{} is a symbolic link to {}, which cannot be read ({e}): a data directory must hold what it \
                     uses; remove the link from the source or make it point at what it should",
                    shown.display(),
                    target.display()
                )))
            }
        }
        let final_path = self.dir.join(link);
        let tmp = with_suffix(&final_path, PARTIAL);
        let what = format!("copying {} (the target of {}) into the image", target.display(), shown.display());
        self.copy_in(target, &tmp, user, what)?;
        fs::remove_file(&final_path)?;
        fs::rename(&tmp, &final_path)?;
        tracing::info!(data_dir = %self.dir.display(), "{} was a link to {}; it is now a copy", link.display(), target.display());
        Ok(())
    }

    /// Copies `from` (outside) to `to` (inside, not there yet), which must then hold only
    /// files and directories; gives it to `user` when this process is root.
    fn copy_in(&self, from: &Path, to: &Path, user: &User, what: String) -> Result<()> {
        remove_any(to)?;
        // `cp -a` copies symlinks as they are: any inside the target is refused below.
        sys::tree::copy(from, to, sys::tree::CopyData::Copy, None).map_err(|e| copy_failed(what, e))?;
        if let Some(odd) = first_not_plain(to)? {
            sys::tree::remove(to)?;
            let odd = from.join(odd.strip_prefix(to).unwrap_or(&odd));
            return Err(refuse(format!(
                "{} holds {}, which is neither a file nor a directory (a symbolic link?): thinclone brings only \
                 files and directories from outside the data directory into an image",
                from.display(),
                odd.display()
            )));
        }
        if sys::user::running_as_root() {
            sys::tree::chown(to, user.uid, user.gid)?;
        }
        Ok(())
    }

    /// Follows the relative symlink `link` inside the root, through other links, and
    /// refuses it if it climbs out.
    fn resolve_inside(&self, link: &Path) -> Result<()> {
        let climbs_out = |why: &str| {
            refuse(format!(
                "{} is a symbolic link that {why}: what it pointed at in the source cannot be known from a copy; \
                 replace it in the source with what it points at",
                self.dir.join(link).display()
            ))
        };
        let mut at: Vec<OsString> = link.parent().map(components).unwrap_or_default();
        let first = fs::read_link(self.dir.join(link))?;
        let mut queue = segments(&first).ok_or_else(|| climbs_out("is absolute"))?;
        let mut hops = 1;
        while let Some(part) = queue.pop_front() {
            if part == ".." {
                if at.pop().is_none() {
                    return Err(climbs_out("leads out of the data directory"));
                }
                continue;
            }
            at.push(part);
            let here: PathBuf = at.iter().collect();
            let Ok(meta) = fs::symlink_metadata(self.dir.join(&here)) else { continue };
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(climbs_out("goes round in a loop of links"));
                }
                at.pop();
                let next = fs::read_link(self.dir.join(&here))?;
                let mut parts =
                    segments(&next).ok_or_else(|| climbs_out("leads, through an absolute link, elsewhere"))?;
                parts.extend(queue);
                queue = parts;
            }
        }
        Ok(())
    }
}

/// The normal components of a path, as names.
fn components(path: &Path) -> Vec<OsString> {
    path.components().filter(|c| matches!(c, Component::Normal(_))).map(|c| c.as_os_str().to_owned()).collect()
}

/// A relative link's parts (`..` and names); `None` for an absolute one.
fn segments(target: &Path) -> Option<std::collections::VecDeque<OsString>> {
    let mut parts = std::collections::VecDeque::new();
    for c in target.components() {
        match c {
            Component::Normal(n) => parts.push_back(n.to_owned()),
            Component::ParentDir => parts.push_back(OsString::from("..")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts)
}

/// An absolute path without `.` and `..` (resolved lexically); `None` if it climbs above `/`.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// The first entry under `dir` (itself included) that is neither a file nor a directory.
fn first_not_plain(dir: &Path) -> io::Result<Option<PathBuf>> {
    let mut todo = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        let kind = fs::symlink_metadata(&path)?.file_type();
        if kind.is_dir() {
            for entry in fs::read_dir(&path)? {
                todo.push(entry?.path());
            }
        } else if !kind.is_file() {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes a file, link or tree; one that is not there is not an error.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The entries of a `tablespace_map` file (oid, location), read as PostgreSQL reads it: one
/// per line, the oid and the path split at the first space, a backslash escaping the next
/// character. `None` when there is no such file.
fn read_tablespace_map(path: &Path) -> Result<Option<Vec<(String, PathBuf)>>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    parse_tablespace_map(&bytes)
        .map(Some)
        .ok_or_else(|| refuse(format!("{} is not a valid tablespace map", path.display())))
}

fn parse_tablespace_map(bytes: &[u8]) -> Option<Vec<(String, PathBuf)>> {
    let mut entries = Vec::new();
    let mut line = Vec::new();
    let mut escaped = false;
    let mut finish = |line: &mut Vec<u8>| -> Option<()> {
        if line.is_empty() {
            return Some(());
        }
        let space = line.iter().position(|&b| b == b' ')?;
        let (oid, path) = (&line[..space], &line[space + 1..]);
        if !is_oid(OsStr::from_bytes(oid)) || path.is_empty() {
            return None;
        }
        entries.push((String::from_utf8_lossy(oid).into_owned(), PathBuf::from(OsString::from_vec(path.to_vec()))));
        line.clear();
        Some(())
    };
    for &b in bytes {
        if !escaped && (b == b'\n' || b == b'\r') {
            finish(&mut line)?;
        } else if !escaped && b == b'\\' {
            escaped = true;
        } else {
            line.push(b);
            escaped = false;
        }
    }
    finish(&mut line)?;
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> User {
        User::current()
    }

    #[test]
    fn tablespace_maps_parse_as_postgresql_reads_them() {
        let map = parse_tablespace_map(b"16384 /srv/ts one\n16385 /srv/with\\\\back\\\nslash\r\n\n").unwrap();
        assert_eq!(
            map,
            vec![
                ("16384".into(), PathBuf::from("/srv/ts one")),
                ("16385".into(), PathBuf::from("/srv/with\\back\nslash"))
            ]
        );
        assert_eq!(parse_tablespace_map(b"").unwrap(), vec![]);
        assert!(parse_tablespace_map(b"abc /x\n").is_none());
        assert!(parse_tablespace_map(b"16384\n").is_none());
    }

    #[test]
    fn relative_links_are_computed_from_the_links_place() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        assert_eq!(
            root.relative_to(Path::new("pg_tblspc/16384"), Path::new("thinclone_tablespaces/16384")),
            Path::new("../thinclone_tablespaces/16384")
        );
        assert_eq!(root.relative_to(Path::new("pg_wal"), Path::new("wal")), Path::new("wal"));
        assert_eq!(root.inside(&dir.path().join("a/../b")), Some(PathBuf::from("b")));
        assert_eq!(root.inside(Path::new("/elsewhere")), None);
        assert_eq!(root.inside(&dir.path().join("../x")), None);
    }

    /// The source's tablespace and its `pg_wal` are copied in, links into the copy become
    /// relative, and nothing outside changes.
    #[test]
    fn what_lies_outside_comes_in_and_the_source_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (data, outside) = (dir.path().join("data"), dir.path().join("outside"));
        fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        fs::create_dir_all(outside.join("ts/PG_15_1/5")).unwrap();
        fs::create_dir_all(outside.join("ts/PG_14_0")).unwrap();
        fs::write(outside.join("ts/PG_15_1/5/100"), b"table").unwrap();
        fs::create_dir_all(outside.join("wal")).unwrap();
        fs::write(outside.join("wal/000000010000000000000001"), b"wal").unwrap();
        fs::write(outside.join("extra.conf"), b"work_mem = 1MB\n").unwrap();
        symlink(outside.join("ts"), data.join("pg_tblspc/16384")).unwrap();
        symlink(outside.join("wal"), data.join("pg_wal")).unwrap();
        symlink(outside.join("extra.conf"), data.join("extra.conf")).unwrap();
        fs::create_dir(data.join("base")).unwrap();
        symlink(data.join("base"), data.join("inside-absolute")).unwrap();
        symlink("base", data.join("inside-relative")).unwrap();

        make_self_contained(&data, "PG_15_1", &me(), None).unwrap();
        assert_eq!(fs::read_link(data.join("pg_tblspc/16384")).unwrap(), Path::new("../thinclone_tablespaces/16384"));
        assert_eq!(fs::read(data.join("pg_tblspc/16384/PG_15_1/5/100")).unwrap(), b"table");
        assert!(!data.join("thinclone_tablespaces/16384/PG_14_0").exists(), "another version's directory came too");
        assert!(fs::symlink_metadata(data.join("pg_wal")).unwrap().is_dir());
        assert_eq!(fs::read(data.join("pg_wal/000000010000000000000001")).unwrap(), b"wal");
        assert!(fs::symlink_metadata(data.join("extra.conf")).unwrap().is_file());
        assert_eq!(fs::read_link(data.join("inside-absolute")).unwrap(), Path::new("base"));
        assert_eq!(fs::read_link(data.join("inside-relative")).unwrap(), Path::new("base"));
        // The outside is as it was.
        assert_eq!(fs::read(outside.join("ts/PG_15_1/5/100")).unwrap(), b"table");
        assert!(outside.join("ts/PG_14_0").is_dir() && outside.join("wal/000000010000000000000001").is_file());
        // Nothing partial is left, and a second pass changes nothing.
        make_self_contained(&data, "PG_15_1", &me(), None).unwrap();
        let names: Vec<_> = fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!names.iter().any(|n| n.to_string_lossy().contains(PARTIAL)), "{names:?}");
    }

    #[test]
    fn what_cannot_come_in_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let case = |setup: &dyn Fn(&Path), expected: &str| {
            sys::tree::remove(&data).unwrap();
            fs::create_dir_all(data.join("pg_tblspc")).unwrap();
            setup(&data);
            let err = make_self_contained(&data, "PG_15_1", &me(), None).unwrap_err();
            assert!(matches!(err, Error::BadSource(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        };
        case(&|d| symlink("/no/such/place", d.join("dangling")).unwrap(), "dangling");
        case(&|d| symlink("../../etc/passwd", d.join("climber")).unwrap(), "climber is a symbolic link that leads out");
        case(
            &|d| {
                fs::create_dir(d.join("a")).unwrap();
                symlink("..", d.join("a/up")).unwrap();
                symlink("a/up/../x", d.join("through")).unwrap();
            },
            "through is a symbolic link that leads out",
        );
        case(&|d| symlink("/dev/null", d.join("device")).unwrap(), "neither a file nor a directory");
        let ts = dir.path().join("ts");
        fs::create_dir_all(ts.join("PG_14_0")).unwrap();
        case(&|d| symlink(&ts, d.join("pg_tblspc/16384")).unwrap(), "has no directory PG_15_1 for this server");
        fs::create_dir_all(ts.join("PG_15_1")).unwrap();
        symlink("/etc/hostname", ts.join("PG_15_1/odd")).unwrap();
        case(&|d| symlink(&ts, d.join("pg_tblspc/16384")).unwrap(), "odd, which is neither a file nor a directory");
        assert!(!data.join("thinclone_tablespaces/16384/PG_15_1").exists(), "a refused copy was left");
        // A snapshot of a server that still runs: its tablespace would not match.
        fs::remove_file(ts.join("PG_15_1/odd")).unwrap();
        sys::tree::remove(&data).unwrap();
        fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        symlink(&ts, data.join("pg_tblspc/16384")).unwrap();
        let err =
            make_self_contained(&data, "PG_15_1", &me(), Some("the server (pid 7) still runs on /src")).unwrap_err();
        assert!(
            err.to_string().contains("from the instant of the rest") && err.to_string().contains("--from-url"),
            "{err}"
        );
    }

    #[test]
    fn a_tablespace_map_is_followed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ts = dir.path().join("ts space");
        fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        fs::create_dir_all(ts.join("PG_15_1")).unwrap();
        fs::write(ts.join("PG_15_1/f"), b"x").unwrap();
        fs::write(data.join("tablespace_map"), format!("16390 {}\n", ts.display())).unwrap();
        make_self_contained(&data, "PG_15_1", &me(), None).unwrap();
        assert!(!data.join("tablespace_map").exists());
        assert_eq!(fs::read(data.join("pg_tblspc/16390/PG_15_1/f")).unwrap(), b"x");
        assert_eq!(fs::read_link(data.join("pg_tblspc/16390")).unwrap(), tablespace_link("16390"));
    }

    #[test]
    fn a_live_copys_links_become_relative_and_strays_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        fs::create_dir_all(tablespace_home(&data, "16384")).unwrap();
        symlink(tablespace_home(&data, "16384"), data.join("pg_tblspc/16384")).unwrap();
        relink_inside(&data).unwrap();
        assert_eq!(fs::read_link(data.join("pg_tblspc/16384")).unwrap(), tablespace_link("16384"));
        symlink("/srv/elsewhere", data.join("pg_tblspc/16999")).unwrap();
        let err = relink_inside(&data).unwrap_err().to_string();
        assert!(err.contains("pg_tblspc/16999") && err.contains("/srv/elsewhere"), "{err}");
    }
}
