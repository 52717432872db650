//! Git history: every blob in the object database is scanned exactly once — reachable or
//! not, loose or packed, deleted files included — with a pure-Rust reader (gix-odb).
//!
//! A blob is attributed to the oldest commit whose tree holds it, with the path it had
//! there; blobs no commit reaches (dangling, or only in a stash-like leftover pack) are
//! still scanned and reported under `.git/blob/<id>`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gix_hash::ObjectId;
use gix_object::{FindHeader, Kind};
use gix_odb::HandleArc;

use super::{Origin, ScanError, Scanner, Sink};
use crate::finding::{GitOrigin, SourceKind};

/// Pack-delta cache per worker; bounded so history scans stay within the memory budget.
const PACK_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Objects handed to a worker at a time.
const WORK_BATCH: usize = 64;

/// True when `path` looks like a bare repository (objects, refs and HEAD at its top).
pub(crate) fn is_bare_repo(path: &Path) -> bool {
    path.join("objects").is_dir() && path.join("refs").is_dir() && path.join("HEAD").is_file()
}

/// The object directory of the repository at `repo` (working tree or bare), following
/// `.git` files (worktrees, submodules) and `commondir`.
fn objects_dir(repo: &Path) -> Option<PathBuf> {
    let dotgit = repo.join(".git");
    let mut gitdir = if dotgit.is_dir() {
        dotgit
    } else if dotgit.is_file() {
        let text = std::fs::read_to_string(&dotgit).ok()?;
        let target = text.trim().strip_prefix("gitdir:")?.trim();
        repo.join(target)
    } else if is_bare_repo(repo) {
        repo.to_owned()
    } else {
        return None;
    };
    if let Ok(common) = std::fs::read_to_string(gitdir.join("commondir")) {
        gitdir = gitdir.join(common.trim());
    }
    let objects = gitdir.join("objects");
    objects.is_dir().then_some(objects)
}

struct CommitInfo {
    id: ObjectId,
    tree: ObjectId,
    origin: GitOrigin,
}

fn git_err(repo: &Path, message: impl std::fmt::Display) -> ScanError {
    ScanError::Git {
        path: repo.to_owned(),
        message: message.to_string(),
    }
}

fn open(objects: &Path, repo: &Path) -> Result<HandleArc, ScanError> {
    let mut odb = gix_odb::at(objects, gix_hash::Kind::Sha1)
        .and_then(|h| h.into_arc())
        .map_err(|e| git_err(repo, e))?;
    odb.set_pack_cache(|| {
        Box::new(gix_pack::cache::lru::StaticLinkedList::<64>::new(
            PACK_CACHE_BYTES,
        ))
    });
    Ok(odb)
}

/// Scans every blob of the repository at `repo`; paths are shown under `prefix`.
pub(crate) fn scan_history(
    scanner: &Scanner,
    repo: &Path,
    prefix: &str,
    sink: Sink<'_>,
) -> Result<(), ScanError> {
    let Some(objects) = objects_dir(repo) else {
        return Ok(());
    };
    let odb = open(&objects, repo)?;
    let mut ids: Vec<ObjectId> = Vec::new();
    for id in odb.iter().map_err(|e| git_err(repo, e))? {
        match id {
            Ok(id) => ids.push(id),
            Err(e) => tracing::debug!(repo = %repo.display(), error = %e, "skipping object"),
        }
    }
    ids.sort_unstable();
    ids.dedup();

    let threads = scanner.threads();
    let (commits, blobs) = classify(&odb, &ids, threads);
    let paths = attribute(&odb, commits);

    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let odb = odb.clone();
            let (blobs, paths, next) = (&blobs, &paths, &next);
            s.spawn(move || {
                let mut buf = Vec::new();
                loop {
                    let start = next.fetch_add(WORK_BATCH, Ordering::Relaxed);
                    let Some(batch) = blobs.get(start..(start + WORK_BATCH).min(blobs.len()))
                    else {
                        break;
                    };
                    if batch.is_empty() {
                        break;
                    }
                    for id in batch {
                        scan_blob(scanner, &odb, id, paths.get(id), prefix, &mut buf, sink);
                    }
                }
            });
        }
    });
    Ok(())
}

/// Reads every object's header (in parallel), decodes commits, and lists blobs.
fn classify(odb: &HandleArc, ids: &[ObjectId], threads: usize) -> (Vec<CommitInfo>, Vec<ObjectId>) {
    let commits = Mutex::new(Vec::new());
    let blobs = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let odb = odb.clone();
            let (commits, blobs, next) = (&commits, &blobs, &next);
            s.spawn(move || {
                let mut my_commits = Vec::new();
                let mut my_blobs = Vec::new();
                let mut buf = Vec::new();
                loop {
                    let start = next.fetch_add(WORK_BATCH, Ordering::Relaxed);
                    let end = (start + WORK_BATCH).min(ids.len());
                    let Some(batch) = ids.get(start..end) else {
                        break;
                    };
                    if batch.is_empty() {
                        break;
                    }
                    for id in batch {
                        let Ok(Some(header)) = odb.try_header(id) else {
                            continue;
                        };
                        match header.kind {
                            Kind::Blob => my_blobs.push(*id),
                            Kind::Commit => {
                                if let Some(c) = decode_commit(&odb, id, &mut buf) {
                                    my_commits.push(c);
                                }
                            }
                            Kind::Tree | Kind::Tag => {}
                        }
                    }
                }
                lock(commits).extend(my_commits);
                lock(blobs).extend(my_blobs);
            });
        }
    });
    let mut commits = commits.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut blobs = blobs.into_inner().unwrap_or_else(|e| e.into_inner());
    // Oldest first, so each blob is credited to the commit that introduced it.
    commits.sort_by(|a, b| a.origin.time.cmp(&b.origin.time).then(a.id.cmp(&b.id)));
    blobs.sort_unstable();
    (commits, blobs)
}

fn decode_commit(odb: &HandleArc, id: &ObjectId, buf: &mut Vec<u8>) -> Option<CommitInfo> {
    use gix_object::Find;
    let data = odb.try_find(id, buf).ok()??;
    let commit = gix_object::CommitRef::from_bytes(data.data, gix_hash::Kind::Sha1).ok()?;
    let author = commit.author().ok()?;
    Some(CommitInfo {
        id: *id,
        tree: commit.tree(),
        origin: GitOrigin {
            commit: id.to_string(),
            author: author.name.to_string().trim().to_owned(),
            email: author.email.to_string().trim().to_owned(),
            time: author.seconds(),
        },
    })
}

/// Walks each commit's tree, oldest commit first, visiting every tree once, and maps each
/// blob to the first (commit, path) that holds it.
fn attribute(
    odb: &HandleArc,
    commits: Vec<CommitInfo>,
) -> HashMap<ObjectId, (Arc<GitOrigin>, String)> {
    use gix_object::Find;
    let mut seen_trees: HashSet<ObjectId> = HashSet::new();
    let mut blobs: HashMap<ObjectId, (Arc<GitOrigin>, String)> = HashMap::new();
    let mut buf = Vec::new();
    for commit in commits {
        let origin = Arc::new(commit.origin);
        let mut stack = vec![(commit.tree, String::new())];
        while let Some((tree, dir)) = stack.pop() {
            if !seen_trees.insert(tree) {
                continue;
            }
            let Ok(Some(data)) = odb.try_find(&tree, &mut buf) else {
                continue;
            };
            if data.kind != Kind::Tree {
                continue;
            }
            for entry in gix_object::TreeRefIter::from_bytes(data.data, gix_hash::Kind::Sha1) {
                let Ok(entry) = entry else {
                    break;
                };
                let name = entry.filename.to_string();
                let path = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                if entry.mode.is_tree() {
                    stack.push((entry.oid.to_owned(), path));
                } else if entry.mode.is_blob() {
                    blobs
                        .entry(entry.oid.to_owned())
                        .or_insert_with(|| (Arc::clone(&origin), path));
                }
            }
        }
    }
    blobs
}

fn scan_blob(
    scanner: &Scanner,
    odb: &HandleArc,
    id: &ObjectId,
    attributed: Option<&(Arc<GitOrigin>, String)>,
    prefix: &str,
    buf: &mut Vec<u8>,
    sink: Sink<'_>,
) {
    use gix_object::Find;
    match odb.try_header(id) {
        Ok(Some(h)) if h.size <= scanner.options.max_file_size => {}
        Ok(Some(_)) => {
            scanner
                .counters
                .skipped_large
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        _ => return,
    }
    let Ok(Some(data)) = odb.try_find(id, buf) else {
        scanner.counters.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let hex = id.to_string();
    let (path, git) = match attributed {
        Some((origin, path)) => (path.clone(), Some(GitOrigin::clone(origin))),
        None => (format!(".git/blob/{hex}"), None),
    };
    let path = if prefix == "." {
        path
    } else {
        format!("{prefix}/{path}")
    };
    let origin = Origin {
        path,
        source: SourceKind::Git,
        blob: Some(hex),
        git,
    };
    scanner.progress.blobs.fetch_add(1, Ordering::Relaxed);
    scanner.scan_buffer(data.data, &origin, sink);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
