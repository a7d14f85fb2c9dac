//! The callsites that forwarded events are emitted at, in the parent.
//!
//! `tracing` wants `'static` metadata for every event. A forwarded event
//! gets a callsite of its own, made the first time its kind is seen: one
//! per level, target, module path, file, line and field names, so one per
//! callsite of the worker's program. Its metadata is the worker's, with the
//! fields `pid` and `item` added, so subscribers filter it by target and
//! field and print it as they would a local event; each callsite is
//! registered with `tracing`, so its interest is cached as any other's.
//!
//! These callsites are leaked: `tracing` never releases one. A correct
//! program has a fixed set of callsites, but a worker is untrusted and can
//! make up as many as it likes, so there are at most [`MAX_SITES`] of them
//! in a process, holding at most [`MAX_LEAKED`] bytes of names. Past that,
//! events are emitted at one fixed callsite per level under the target
//! [`TASK`]: their own target, module path, file and line become fields,
//! and their fields one `fields` text (`name=value …`).
//!
//! (A fixed callsite per level for every event, as `tracing-log` has for
//! `log` records, would leak nothing; but its field names are fixed, so
//! each event's fields would be one text, and a subscriber's filters by
//! target would not see the worker's targets.)

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::{Dispatch, Level};
use tracing_core::callsite::{Callsite, Identifier};
use tracing_core::field::FieldSet;
use tracing_core::metadata::{Kind, Metadata};
use tracing_core::subscriber::Interest;

use super::TASK;
use crate::proto::log::Record;

/// Most callsites made for forwarded events in one process.
pub(crate) const MAX_SITES: usize = 1024;
/// Most bytes of names those callsites hold.
pub(crate) const MAX_LEAKED: usize = 1 << 20;

/// The fields a forwarded event gets besides its own: the worker process
/// and the item's input position.
pub(crate) const PID: &str = "pid";
pub(crate) const ITEM: &str = "item";

/// The fields of the fixed callsites, in order.
pub(crate) const FIXED_FIELDS: [&str; 8] = [
    "message",
    "target",
    "module_path",
    "file",
    "line",
    "fields",
    PID,
    ITEM,
];

/// A callsite made at run time.
pub(crate) struct Site {
    /// Set once, before the site is registered or handed out.
    meta: OnceLock<Metadata<'static>>,
    /// 0: never, 1: sometimes, 2: always.
    interest: AtomicU8,
}

impl Callsite for Site {
    fn set_interest(&self, interest: Interest) {
        let value = if interest.is_never() {
            0
        } else if interest.is_always() {
            2
        } else {
            1
        };
        self.interest.store(value, Ordering::Relaxed);
    }

    fn metadata(&self) -> &Metadata<'_> {
        self.meta
            .get()
            .expect("a site's metadata is set before anyone sees the site")
    }
}

impl Site {
    /// `false` if no subscriber wants events from here.
    pub(crate) fn wanted(&self) -> bool {
        self.interest.load(Ordering::Relaxed) != 0
    }
}

/// How a site's fields map to a record's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The record's fields in order (a worker's `pid` or `item` renamed
    /// `task.pid` or `task.item`), then [`PID`] and [`ITEM`].
    Own,
    /// [`FIXED_FIELDS`].
    Fixed,
}

/// The level of a record's level byte (1 = ERROR … 5 = TRACE).
pub(crate) fn level(byte: u8) -> Level {
    match byte {
        1 => Level::ERROR,
        2 => Level::WARN,
        3 => Level::INFO,
        4 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// A worker's field name as the site has it.
pub(crate) fn field_name(name: &str) -> &str {
    match name {
        PID => "task.pid",
        ITEM => "task.item",
        other => other,
    }
}

#[derive(Default)]
struct Registry {
    /// By the hash of what tells sites apart ([`key_hash`]).
    sites: HashMap<u64, Vec<&'static Site>>,
    count: usize,
    strings: HashSet<&'static str>,
    leaked: usize,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

fn key_hash(r: &Record<'_>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (r.level, r.target, r.module_path, r.file, r.line).hash(&mut h);
    for (name, _) in &r.fields {
        field_name(name).hash(&mut h);
    }
    h.finish()
}

/// Whether `site` is the one for `r`.
fn matches(site: &Site, r: &Record<'_>) -> bool {
    let m = site.metadata();
    *m.level() == level(r.level)
        && m.target() == r.target
        && m.module_path() == r.module_path
        && m.file() == r.file
        && m.line() == r.line
        && m.fields().len() == r.fields.len() + 2
        && m.fields()
            .iter()
            .zip(&r.fields)
            .all(|(f, (name, _))| f.name() == field_name(name))
}

/// The callsite to emit `r` at into `dispatch`, and how its fields map to
/// the record's.
pub(crate) fn site_for(r: &Record<'_>, dispatch: &Dispatch) -> (&'static Site, Layout) {
    let hash = key_hash(r);
    let made = {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&site) = reg
            .sites
            .get(&hash)
            .and_then(|sites| sites.iter().find(|s| matches(s, r)))
        {
            return (site, Layout::Own);
        }
        match reg.make(r) {
            Some(site) => {
                reg.sites.entry(hash).or_default().push(site);
                site
            }
            None => return (fixed(level(r.level), dispatch), Layout::Fixed),
        }
    };
    // Outside the lock: registering asks every subscriber about the site.
    register(made, dispatch);
    (made, Layout::Own)
}

/// Registers `site`. With a single dispatcher in the process, `tracing`
/// asks only this thread's default about a new callsite: that must be the
/// one its events go to.
fn register(site: &'static Site, dispatch: &Dispatch) {
    tracing::dispatcher::with_default(dispatch, || tracing_core::callsite::register(site));
}

impl Registry {
    /// A site for `r`, if the caps leave room for one.
    fn make(&mut self, r: &Record<'_>) -> Option<&'static Site> {
        let name = format!(
            "event {}:{}",
            r.file.unwrap_or("?"),
            r.line.map_or(0, |l| l)
        );
        let texts = [Some(r.target), r.module_path, r.file, Some(&name[..])];
        let need: usize = texts.iter().flatten().map(|s| s.len()).sum::<usize>()
            + r.fields.iter().map(|(n, _)| n.len() + 16).sum::<usize>()
            + 256;
        if self.count >= MAX_SITES || self.leaked + need > MAX_LEAKED {
            return None;
        }
        self.count += 1;
        let mut names: Vec<&'static str> = r
            .fields
            .iter()
            .map(|(n, _)| self.intern(field_name(n)))
            .collect();
        names.extend([PID, ITEM]);
        self.leaked += need;
        let parts = Parts {
            name: self.intern(&name),
            target: self.intern(r.target),
            level: level(r.level),
            file: r.file.map(|f| self.intern(f)),
            line: r.line,
            module_path: r.module_path.map(|m| self.intern(m)),
            fields: Box::leak(names.into_boxed_slice()),
        };
        Some(leak_site(parts))
    }

    fn intern(&mut self, s: &str) -> &'static str {
        if let Some(&kept) = self.strings.get(s) {
            return kept;
        }
        let kept: &'static str = Box::leak(s.to_owned().into_boxed_str());
        self.strings.insert(kept);
        kept
    }
}

/// What a site's metadata says.
struct Parts {
    name: &'static str,
    target: &'static str,
    level: Level,
    file: Option<&'static str>,
    line: Option<u32>,
    module_path: Option<&'static str>,
    fields: &'static [&'static str],
}

/// A new site (not registered yet).
fn leak_site(p: Parts) -> &'static Site {
    let site: &'static Site = Box::leak(Box::new(Site {
        meta: OnceLock::new(),
        interest: AtomicU8::new(1),
    }));
    let meta = Metadata::new(
        p.name,
        p.target,
        p.level,
        p.file,
        p.line,
        p.module_path,
        FieldSet::new(p.fields, Identifier(site)),
        Kind::EVENT,
    );
    if site.meta.set(meta).is_err() {
        unreachable!("a new site's metadata is set once");
    }
    site
}

/// The fixed site of `level` (see the module docs), for events that go
/// to `dispatch`.
pub(crate) fn fixed(level: Level, dispatch: &Dispatch) -> &'static Site {
    static FIXED: OnceLock<[&'static Site; 5]> = OnceLock::new();
    let sites = FIXED.get_or_init(|| {
        let make = |level: Level, name: &'static str| {
            let site = leak_site(Parts {
                name,
                target: TASK,
                level,
                file: None,
                line: None,
                module_path: None,
                fields: &FIXED_FIELDS,
            });
            register(site, dispatch);
            site
        };
        [
            make(Level::ERROR, "forwarded event"),
            make(Level::WARN, "forwarded event"),
            make(Level::INFO, "forwarded event"),
            make(Level::DEBUG, "forwarded event"),
            make(Level::TRACE, "forwarded event"),
        ]
    });
    let i = match level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        Level::DEBUG => 3,
        _ => 4,
    };
    sites[i]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::log::Value;

    fn record(target: &str) -> Record<'_> {
        Record {
            level: 3,
            batch: 1,
            item: 0,
            line: None,
            target,
            module_path: None,
            file: None,
            fields: vec![("message", Value::Str("hi"))],
        }
    }

    #[test]
    fn sites_are_capped_in_number_and_bytes() {
        let mut reg = Registry::default();
        let made = (0..MAX_SITES + 10)
            .filter(|k| reg.make(&record(&format!("cap::t{k}"))).is_some())
            .count();
        assert_eq!(made, MAX_SITES);
        let mut reg = Registry::default();
        let long = "t".repeat(crate::proto::log::MAX_META);
        let names: Vec<String> = (0..crate::proto::log::MAX_FIELDS)
            .map(|k| format!("{k}{}", "n".repeat(crate::proto::log::MAX_NAME - 3)))
            .collect();
        let made = (0..MAX_SITES)
            .filter(|k| {
                let target = format!("{long}{k}");
                let mut r = record(&target);
                r.fields = names.iter().map(|n| (&n[..], Value::Bool(true))).collect();
                reg.make(&r).is_some()
            })
            .count();
        assert!(made < MAX_SITES && reg.leaked <= MAX_LEAKED, "{made}");
    }

    #[test]
    fn a_site_has_the_records_metadata_and_two_more_fields() {
        let mut r = record("site::test");
        r.fields.push(("pid", Value::U64(1)));
        let site = Registry::default().make(&r).expect("room for one");
        assert!(matches(site, &r));
        let m = site.metadata();
        let names: Vec<&str> = m.fields().iter().map(|f| f.name()).collect();
        assert_eq!(names, ["message", "task.pid", PID, ITEM]);
        assert_eq!((m.target(), *m.level()), ("site::test", Level::INFO));
        assert!(!matches(site, &record("site::test")));
    }
}
