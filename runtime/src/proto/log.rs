//! A worker's forwarded `tracing` events: one datagram each on the
//! worker's event socket (see [`crate::trace`]), written by [`Writer`] in
//! the child and read by [`read`] in the parent.
//!
//! An event record is, little-endian:
//! - `kind` (`u8`, [`KIND_EVENT`]), `level` (`u8`, 1 = ERROR … 5 = TRACE);
//! - the batch running when it was emitted (`u64`) and the item of that
//!   batch (`u64`, [`NO_ITEM`] for none), the source line (`u32`,
//!   [`NO_LINE`] for none);
//! - the target, then the module path and the file (each a `u16` length,
//!   [`NO_STR`] for none, then UTF-8), each at most [`MAX_META`] bytes;
//! - the field count (`u8`, at most [`MAX_FIELDS`]), then each field: its
//!   name (`u8` length, at most [`MAX_NAME`] bytes of UTF-8), a type byte
//!   and the value: a string (`u32` length, then UTF-8), an `i64`, a `u64`,
//!   an `f64` (8 bytes each) or a `bool` (one byte, 0 or 1).
//!
//! A dropped-events record is [`KIND_DROPPED`] and a `u64` count.
//!
//! A record is at most [`MAX_RECORD`] bytes and holds nothing after its
//! last field. The child cuts long values to fit ([`Writer`]); the parent
//! refuses whatever breaks a rule above, which only a broken or hostile
//! child sends.

use std::fmt::Write as _;

use crate::proto::Cursor;

/// Largest record, in bytes.
pub(crate) const MAX_RECORD: usize = 64 << 10;
/// Most fields in one record (the child drops the rest).
pub(crate) const MAX_FIELDS: usize = 32;
/// Longest field name, in bytes.
pub(crate) const MAX_NAME: usize = 128;
/// Longest target, module path or file name, in bytes.
pub(crate) const MAX_META: usize = 512;
/// Longest string value, in bytes, before the record's own cap.
const MAX_VALUE: usize = 32 << 10;

pub(crate) const KIND_EVENT: u8 = 1;
pub(crate) const KIND_DROPPED: u8 = 2;
/// An event emitted while no item ran (the progress page's word for it).
pub(crate) const NO_ITEM: u64 = crate::proto::IDLE;
pub(crate) const NO_LINE: u32 = u32::MAX;
const NO_STR: u16 = u16::MAX;

const TYPE_STR: u8 = 0;
const TYPE_I64: u8 = 1;
const TYPE_U64: u8 = 2;
const TYPE_F64: u8 = 3;
const TYPE_BOOL: u8 = 4;

/// Bytes of an event record before its target.
const HEAD: usize = 1 + 1 + 8 + 8 + 4;
/// Bytes that every field takes besides its name and value.
const FIELD_OVERHEAD: usize = 1 + 1;
/// What a cut string ends with.
const ELLIPSIS: &str = "…";

/// A field's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    Str(&'a str),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

/// A checked event record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record<'a> {
    /// 1 = ERROR … 5 = TRACE.
    pub(crate) level: u8,
    pub(crate) batch: u64,
    /// The item of `batch`, or [`NO_ITEM`]: the child's word, to be
    /// checked against the batch before it is believed.
    pub(crate) item: u64,
    pub(crate) line: Option<u32>,
    pub(crate) target: &'a str,
    pub(crate) module_path: Option<&'a str>,
    pub(crate) file: Option<&'a str>,
    /// At most [`MAX_FIELDS`], in the order the event has them.
    pub(crate) fields: Vec<(&'a str, Value<'a>)>,
}

/// One datagram of a worker's event socket, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Message<'a> {
    Event(Record<'a>),
    /// The child dropped this many events (its queue was full).
    Dropped(u64),
}

/// Reads one record.
///
/// # Errors
///
/// What is wrong with it, for a record that breaks a rule of the module
/// docs.
pub(crate) fn read(bytes: &[u8]) -> Result<Message<'_>, String> {
    if bytes.len() > MAX_RECORD {
        return Err(format!(
            "an event record of {} bytes (at most {MAX_RECORD})",
            bytes.len()
        ));
    }
    let mut cur = Cursor(bytes);
    let kind = byte(&mut cur)?;
    match kind {
        KIND_DROPPED => {
            let count = cur.u64().map_err(|_| "a short dropped-events record")?;
            end(cur)?;
            return Ok(Message::Dropped(count));
        }
        KIND_EVENT => {}
        other => return Err(format!("an event record of kind {other}")),
    }
    let level = byte(&mut cur)?;
    if !(1..=5).contains(&level) {
        return Err(format!("an event of level {level} (1 to 5)"));
    }
    let batch = cur.u64().map_err(|_| truncated())?;
    let item = cur.u64().map_err(|_| truncated())?;
    let line = cur.u32().map_err(|_| truncated())?;
    let target = meta_str(&mut cur, "target")?.ok_or("an event without a target")?;
    let module_path = meta_str(&mut cur, "module path")?;
    let file = meta_str(&mut cur, "file")?;
    let count = usize::from(byte(&mut cur)?);
    if count > MAX_FIELDS {
        return Err(format!("an event of {count} fields (at most {MAX_FIELDS})"));
    }
    let mut fields = Vec::with_capacity(count);
    for k in 0..count {
        let len = usize::from(byte(&mut cur)?);
        if len > MAX_NAME {
            return Err(format!(
                "field {k}'s name of {len} bytes (at most {MAX_NAME})"
            ));
        }
        let name = utf8(cur.take(len).map_err(|_| truncated())?, "a field name")?;
        let value = match byte(&mut cur)? {
            TYPE_STR => {
                let len = cur.u32().map_err(|_| truncated())? as usize;
                Value::Str(utf8(
                    cur.take(len).map_err(|_| truncated())?,
                    "a string value",
                )?)
            }
            TYPE_I64 => Value::I64(cur.u64().map_err(|_| truncated())? as i64),
            TYPE_U64 => Value::U64(cur.u64().map_err(|_| truncated())?),
            TYPE_F64 => Value::F64(f64::from_bits(cur.u64().map_err(|_| truncated())?)),
            TYPE_BOOL => match byte(&mut cur)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("field `{name}`: a bool of {b}")),
            },
            t => return Err(format!("field `{name}`: a value of type {t}")),
        };
        fields.push((name, value));
    }
    end(cur)?;
    Ok(Message::Event(Record {
        level,
        batch,
        item,
        line: (line != NO_LINE).then_some(line),
        target,
        module_path,
        file,
        fields,
    }))
}

fn truncated() -> String {
    "a truncated event record".to_owned()
}

fn byte(cur: &mut Cursor<'_>) -> Result<u8, String> {
    Ok(cur.take(1).map_err(|_| truncated())?[0])
}

fn end(cur: Cursor<'_>) -> Result<(), String> {
    match cur.rest().len() {
        0 => Ok(()),
        n => Err(format!("{n} bytes after an event record")),
    }
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(bytes).map_err(|_| format!("{what} that is not UTF-8"))
}

fn meta_str<'a>(cur: &mut Cursor<'a>, what: &str) -> Result<Option<&'a str>, String> {
    let len = cur.take(2).map_err(|_| truncated())?;
    let len = u16::from_le_bytes([len[0], len[1]]);
    if len == NO_STR {
        return Ok(None);
    }
    if usize::from(len) > MAX_META {
        return Err(format!(
            "an event's {what} of {len} bytes (at most {MAX_META})"
        ));
    }
    let bytes = cur.take(usize::from(len)).map_err(|_| truncated())?;
    utf8(bytes, what).map(Some)
}

/// The record of `count` dropped events.
pub(crate) fn dropped(count: u64) -> [u8; 9] {
    let mut out = [0; 9];
    out[0] = KIND_DROPPED;
    out[1..].copy_from_slice(&count.to_le_bytes());
    out
}

/// Builds one event record, within [`MAX_RECORD`] bytes: strings that do
/// not fit are cut (ending in `…`), fields past [`MAX_FIELDS`] or past the
/// room left are dropped.
pub(crate) struct Writer<'b> {
    buf: &'b mut Vec<u8>,
    /// Where the field count is.
    count_at: usize,
    fields: u8,
}

impl<'b> Writer<'b> {
    /// Starts a record in `buf` (cleared).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn begin(
        buf: &'b mut Vec<u8>,
        level: u8,
        batch: u64,
        item: u64,
        target: &str,
        module_path: Option<&str>,
        file: Option<&str>,
        line: Option<u32>,
    ) -> Writer<'b> {
        buf.clear();
        buf.extend_from_slice(&[KIND_EVENT, level]);
        buf.extend_from_slice(&batch.to_le_bytes());
        buf.extend_from_slice(&item.to_le_bytes());
        buf.extend_from_slice(&line.unwrap_or(NO_LINE).to_le_bytes());
        debug_assert_eq!(buf.len(), HEAD);
        for s in [Some(target), module_path, file] {
            match s {
                Some(s) => {
                    let s = cut(s, MAX_META);
                    buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
                    buf.extend_from_slice(s.as_bytes());
                }
                None => buf.extend_from_slice(&NO_STR.to_le_bytes()),
            }
        }
        let count_at = buf.len();
        buf.push(0);
        Writer {
            buf,
            count_at,
            fields: 0,
        }
    }

    /// Room for a field named `name` with `value` bytes of value, if any.
    fn field_head(&mut self, name: &str, value: usize, type_byte: u8) -> bool {
        let name = cut_name(name);
        let need = FIELD_OVERHEAD + name.len() + value;
        if usize::from(self.fields) >= MAX_FIELDS || self.buf.len() + need > MAX_RECORD {
            return false;
        }
        self.buf.push(name.len() as u8);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(type_byte);
        self.fields += 1;
        self.buf[self.count_at] = self.fields;
        true
    }

    pub(crate) fn str(&mut self, name: &str, value: &str) {
        let fixed = FIELD_OVERHEAD + cut_name(name).len() + 4;
        let room = MAX_RECORD
            .saturating_sub(self.buf.len() + fixed)
            .min(MAX_VALUE);
        let value = cut(value, room);
        if self.field_head(name, 4 + value.len(), TYPE_STR) {
            self.buf
                .extend_from_slice(&(value.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(value.as_bytes());
        }
    }

    pub(crate) fn i64(&mut self, name: &str, value: i64) {
        if self.field_head(name, 8, TYPE_I64) {
            self.buf.extend_from_slice(&value.to_le_bytes());
        }
    }

    pub(crate) fn u64(&mut self, name: &str, value: u64) {
        if self.field_head(name, 8, TYPE_U64) {
            self.buf.extend_from_slice(&value.to_le_bytes());
        }
    }

    pub(crate) fn f64(&mut self, name: &str, value: f64) {
        if self.field_head(name, 8, TYPE_F64) {
            self.buf.extend_from_slice(&value.to_bits().to_le_bytes());
        }
    }

    pub(crate) fn bool(&mut self, name: &str, value: bool) {
        if self.field_head(name, 1, TYPE_BOOL) {
            self.buf.push(u8::from(value));
        }
    }

    /// A value given as its `Debug` (or `Display`) text, formatted into
    /// `scratch` and cut to fit.
    pub(crate) fn text(
        &mut self,
        name: &str,
        scratch: &mut String,
        value: std::fmt::Arguments<'_>,
    ) {
        scratch.clear();
        let mut limited = Limited {
            out: scratch,
            left: MAX_VALUE + ELLIPSIS.len(),
        };
        let _ = limited.write_fmt(value);
        self.str(name, scratch);
    }
}

/// A `fmt::Write` that stops taking text after `left` bytes: a value's
/// `Debug` output is never formatted in full only to be cut.
struct Limited<'s> {
    out: &'s mut String,
    left: usize,
}

impl std::fmt::Write for Limited<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if s.len() <= self.left {
            self.out.push_str(s);
            self.left -= s.len();
            return Ok(());
        }
        let mut end = self.left;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.out.push_str(&s[..end]);
        self.left = 0;
        Err(std::fmt::Error)
    }
}

/// `s` if it has at most `max` bytes, else a copy cut at a character
/// boundary and ending in `…`, within `max` bytes.
fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let Some(mut end) = max.checked_sub(ELLIPSIS.len()) else {
        return "".into();
    };
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &s[..end]).into()
}

fn cut_name(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(buf: &mut Vec<u8>) {
        let mut w = Writer::begin(
            buf,
            2,
            7,
            3,
            "app::step",
            Some("app"),
            Some("src/main.rs"),
            Some(42),
        );
        w.str("message", "hello");
        w.i64("delta", -5);
        w.u64("count", 9);
        w.f64("ratio", 0.5);
        w.bool("ok", true);
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let mut buf = Vec::new();
        sample(&mut buf);
        let Ok(Message::Event(r)) = read(&buf) else {
            panic!("{:?}", read(&buf));
        };
        assert_eq!((r.level, r.batch, r.item, r.line), (2, 7, 3, Some(42)));
        assert_eq!(
            (r.target, r.module_path, r.file),
            ("app::step", Some("app"), Some("src/main.rs"))
        );
        assert_eq!(
            r.fields,
            [
                ("message", Value::Str("hello")),
                ("delta", Value::I64(-5)),
                ("count", Value::U64(9)),
                ("ratio", Value::F64(0.5)),
                ("ok", Value::Bool(true)),
            ]
        );
        assert_eq!(read(&dropped(12)), Ok(Message::Dropped(12)));
    }

    #[test]
    fn the_writer_keeps_within_the_caps() {
        let mut buf = Vec::new();
        let long = "é".repeat(MAX_RECORD);
        let mut w = Writer::begin(&mut buf, 5, 1, NO_ITEM, &long, None, None, None);
        for k in 0..MAX_FIELDS + 8 {
            w.str(&format!("{k}{}", "n".repeat(MAX_NAME)), &long);
        }
        let mut scratch = String::new();
        w.text("debug", &mut scratch, format_args!("{}", long));
        assert!(buf.len() <= MAX_RECORD);
        let Ok(Message::Event(r)) = read(&buf) else {
            panic!("{:?}", read(&buf));
        };
        assert!(r.target.len() <= MAX_META && r.target.ends_with(ELLIPSIS));
        assert!(r.fields.len() <= MAX_FIELDS);
        let Value::Str(first) = r.fields[0].1 else {
            panic!("a string")
        };
        assert!(first.len() <= MAX_VALUE && first.ends_with(ELLIPSIS));
        assert_eq!(r.fields[0].0.len(), MAX_NAME);
        assert_eq!(
            (r.item, r.line, r.module_path, r.file),
            (NO_ITEM, None, None, None)
        );
    }

    #[test]
    fn every_broken_rule_is_refused() {
        let mut good = Vec::new();
        sample(&mut good);
        let patched = |at: usize, b: u8| {
            let mut v = good.clone();
            v[at] = b;
            v
        };
        let target_len = HEAD;
        let fields_at = HEAD + 2 + 9 + 2 + 3 + 2 + 11;
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("unknown kind", patched(0, 9)),
            ("level 0", patched(1, 0)),
            ("level 6", patched(1, 6)),
            ("short head", good[..HEAD - 1].to_vec()),
            ("target past the end", patched(target_len, 200)),
            ("no target", [&good[..HEAD], &[0xff, 0xff][..]].concat()),
            ("too many fields", patched(fields_at, MAX_FIELDS as u8 + 1)),
            ("more fields than there are", patched(fields_at, 6)),
            ("trailing byte", [&good[..], &[0][..]].concat()),
            ("cut short", good[..good.len() - 1].to_vec()),
            ("bool of 2", patched(good.len() - 1, 2)),
            ("oversized", vec![KIND_DROPPED; MAX_RECORD + 1]),
            ("short dropped", dropped(3)[..8].to_vec()),
        ];
        for (what, bytes) in bad {
            assert!(read(&bytes).is_err(), "{what} was accepted");
        }
        let mut not_utf8 = good.clone();
        not_utf8[HEAD + 2] = 0xff;
        assert!(read(&not_utf8).is_err());
        let mut long_target = good[..HEAD].to_vec();
        long_target.extend_from_slice(&(MAX_META as u16 + 1).to_le_bytes());
        long_target.extend(std::iter::repeat_n(b'a', MAX_META + 1));
        assert!(read(&long_target).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes: a record or a refusal, never a panic; a record read
        /// keeps every cap.
        #[test]
        fn arbitrary_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Message::Event(r)) = read(&bytes) {
                prop_assert!((1..=5).contains(&r.level) && r.fields.len() <= MAX_FIELDS);
                prop_assert!(r.target.len() <= MAX_META);
            }
        }

        /// A correct record with one byte changed or cut: read as a record
        /// that keeps every cap, or refused.
        #[test]
        fn mutated_records_keep_the_caps(at in any::<prop::sample::Index>(), byte: u8, cut in 0usize..4) {
            let mut buf = Vec::new();
            sample(&mut buf);
            let i = at.index(buf.len());
            buf[i] = byte;
            buf.truncate(buf.len() - cut);
            if let Ok(Message::Event(r)) = read(&buf) {
                prop_assert!((1..=5).contains(&r.level) && r.fields.len() <= 5);
            }
        }
    }
}
