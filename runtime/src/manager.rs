//! [`Manager`]: a shared dictionary and list that several processes use at
//! once, Python's `multiprocessing.Manager().dict()` / `.list()`.
//!
//! The data lives in a broker thread of the process that created the
//! manager. Every handle (in this process or in a worker) has its own
//! socket connection to the broker, so each operation is one request and
//! one reply: about one round trip between processes (tens of
//! microseconds), plus encoding the keys and values with postcard. Use it
//! for coordination and results, not for hot loops; for numbers updated at
//! high rates, use shared memory.

use std::any::type_name;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::proto::stream::{EncodeError, FrameError, FrameReader, FrameWriter, MANAGER_CAP};
use crate::sys::fdpass::{self, FdReader};

#[derive(Serialize, Deserialize)]
enum Request {
    NewMap,
    NewList,
    Connect,
    Map(u32, MapOp),
    List(u32, ListOp),
}

#[derive(Serialize, Deserialize)]
enum MapOp {
    Get(Vec<u8>),
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    Contains(Vec<u8>),
    Len,
    Items,
    Clear,
}

#[derive(Serialize, Deserialize)]
enum ListOp {
    Push(Vec<u8>),
    Pop,
    Get(u64),
    Set(u64, Vec<u8>),
    Len,
    All,
    Clear,
}

#[derive(Serialize, Deserialize)]
enum Response {
    Object(u32),
    /// A new connection; its descriptor comes with the frame.
    Connection,
    Value(Option<Vec<u8>>),
    Flag(bool),
    Len(u64),
    Items(Vec<(Vec<u8>, Vec<u8>)>),
    Values(Vec<Vec<u8>>),
    Done,
    Failed(String),
}

enum Object {
    Map(BTreeMap<Vec<u8>, Vec<u8>>),
    List(Vec<Vec<u8>>),
}

/// Requests the broker serves from one client before it turns to the
/// others: a client that keeps sending cannot starve the rest.
const BURST: usize = 64;

/// One client connection of the broker.
///
/// A client is another process (a handle passed to a worker) and is not
/// trusted: its requests are read with a cap and without waiting for bytes
/// that have not arrived, and its replies are sent without waiting for it
/// to read them. While a reply is not fully sent, the broker reads no more
/// of that client's requests, so it holds at most one reply per client.
struct Client {
    stream: UnixStream,
    frames: FrameReader,
    /// The unsent rest of a reply.
    out: Vec<u8>,
    /// Descriptors to attach to the first byte of `out` (none once a byte
    /// of the reply went).
    fds: Vec<OwnedFd>,
}

impl Client {
    fn new(stream: UnixStream) -> Client {
        Client {
            stream,
            frames: FrameReader::new(MANAGER_CAP),
            out: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Sends a reply, as much as the socket takes now; `Ok(true)` if all of
    /// it went, else the rest waits in `out`.
    fn reply(&mut self, frame: &[u8], fds: Vec<OwnedFd>) -> io::Result<bool> {
        let sent = match fdpass::send_now(&self.stream, frame, &fds) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if sent == frame.len() {
            return Ok(true);
        }
        self.out.extend_from_slice(&frame[sent..]);
        if sent == 0 {
            self.fds = fds;
        }
        Ok(false)
    }

    /// Sends what the socket takes of a pending reply; `Ok(true)` once
    /// nothing is pending.
    fn flush(&mut self) -> io::Result<bool> {
        let mut sent = 0;
        while sent < self.out.len() {
            match fdpass::send_now(&self.stream, &self.out[sent..], &self.fds) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    sent += n;
                    self.fds.clear(); // they went with the first byte
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.out.drain(..sent);
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        Ok(self.out.is_empty())
    }

    /// Serves this client's buffered and arrived requests (at most
    /// [`BURST`]), without waiting for it. `false` if it is to be dropped:
    /// it closed, broke the protocol, or its socket failed.
    fn serve(
        &mut self,
        objects: &mut Vec<Object>,
        writer: &mut FrameWriter,
        joined: &mut Vec<Client>,
    ) -> bool {
        match self.flush() {
            Ok(true) => {}
            Ok(false) => return true,
            Err(_) => return false,
        }
        for _ in 0..BURST {
            let request = match self
                .frames
                .read_message::<Request, _>(&mut self.stream, Some(Instant::now()))
            {
                Ok(Some(request)) => request,
                Ok(None) => return true,
                // Closed, cut short, over the cap or not a request: the
                // connection cannot go on.
                Err(_) => return false,
            };
            let mut new_conn = None;
            let response = serve(objects, request, &mut new_conn);
            let fds: Vec<OwnedFd> = new_conn
                .take()
                .map(|(ours, theirs)| {
                    joined.push(Client::new(ours));
                    theirs
                })
                .into_iter()
                .collect();
            let frame = match writer.encode(&response) {
                Ok(frame) => frame,
                Err(e) => {
                    let why = match e {
                        EncodeError::OverCap { len, cap } => {
                            format!("a reply of {len} bytes is over the cap of {cap} bytes")
                        }
                        EncodeError::Codec(why) => why,
                    };
                    match writer.encode(&Response::Failed(why)) {
                        Ok(frame) => frame,
                        Err(_) => return false,
                    }
                }
            };
            match self.reply(frame, fds) {
                Ok(true) => {}
                Ok(false) => return true,
                Err(_) => return false,
            }
        }
        true
    }
}

/// The broker loop: serves every connection until all of them are closed.
/// It never waits for one client: a client that stalls inside a request,
/// sends garbage or does not read its replies holds up nobody else.
fn broker(first: UnixStream) {
    let mut objects: Vec<Object> = Vec::new();
    let mut clients: Vec<Client> = vec![Client::new(first)];
    let mut writer = FrameWriter::new(MANAGER_CAP);
    let mut joined = Vec::new();
    let mut ready = Vec::new();
    while !clients.is_empty() {
        // A client with a whole request buffered needs no poll to be served.
        let buffered = clients
            .iter()
            .any(|c| c.out.is_empty() && c.frames.has_frame());
        ready.clear();
        {
            let mut fds: Vec<PollFd<'_>> = clients
                .iter()
                .map(|c| {
                    let wanted = if c.out.is_empty() {
                        PollFlags::IN
                    } else {
                        PollFlags::OUT
                    };
                    PollFd::new(&c.stream, wanted)
                })
                .collect();
            let now = Timespec::try_from(Duration::ZERO).expect("zero fits");
            if rustix::event::poll(&mut fds, buffered.then_some(&now)).is_err() {
                continue; // interrupted
            }
            ready.extend(fds.iter().map(|f| !f.revents().is_empty()));
        }
        let mut i = clients.len();
        while i > 0 {
            i -= 1;
            let client = &mut clients[i];
            let buffered = client.out.is_empty() && client.frames.has_frame();
            if !ready[i] && !buffered {
                continue;
            }
            if !client.serve(&mut objects, &mut writer, &mut joined) {
                clients.swap_remove(i); // closed, broke the protocol, or died
            }
        }
        clients.append(&mut joined);
    }
}

fn serve(
    objects: &mut Vec<Object>,
    request: Request,
    new_conn: &mut Option<(UnixStream, OwnedFd)>,
) -> Response {
    match request {
        Request::NewMap => {
            objects.push(Object::Map(BTreeMap::new()));
            Response::Object((objects.len() - 1) as u32)
        }
        Request::NewList => {
            objects.push(Object::List(Vec::new()));
            Response::Object((objects.len() - 1) as u32)
        }
        Request::Connect => match crate::sys::socket_pair() {
            Ok((ours, theirs)) => {
                *new_conn = Some((ours, OwnedFd::from(theirs)));
                Response::Connection
            }
            Err(e) => Response::Failed(e.to_string()),
        },
        Request::Map(id, op) => {
            let Some(Object::Map(map)) = objects.get_mut(id as usize) else {
                return Response::Failed(format!("no shared map #{id}"));
            };
            match op {
                MapOp::Get(k) => Response::Value(map.get(&k).cloned()),
                MapOp::Insert(k, v) => Response::Value(map.insert(k, v)),
                MapOp::Remove(k) => Response::Value(map.remove(&k)),
                MapOp::Contains(k) => Response::Flag(map.contains_key(&k)),
                MapOp::Len => Response::Len(map.len() as u64),
                MapOp::Items => {
                    Response::Items(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                }
                MapOp::Clear => {
                    map.clear();
                    Response::Done
                }
            }
        }
        Request::List(id, op) => {
            let Some(Object::List(list)) = objects.get_mut(id as usize) else {
                return Response::Failed(format!("no shared list #{id}"));
            };
            match op {
                ListOp::Push(v) => {
                    list.push(v);
                    Response::Done
                }
                ListOp::Pop => Response::Value(list.pop()),
                ListOp::Get(i) => Response::Value(list.get(i as usize).cloned()),
                ListOp::Set(i, v) => match list.get_mut(i as usize) {
                    Some(slot) => {
                        *slot = v;
                        Response::Done
                    }
                    None => Response::Failed(format!(
                        "index {i} out of range for a list of {}",
                        list.len()
                    )),
                },
                ListOp::Len => Response::Len(list.len() as u64),
                ListOp::All => Response::Values(list.clone()),
                ListOp::Clear => {
                    list.clear();
                    Response::Done
                }
            }
        }
    }
}

/// One connection to the broker.
struct Conn {
    /// The socket's descriptor, for `Debug`.
    fd: RawFd,
    inner: Mutex<ConnInner>,
}

struct ConnInner {
    stream: UnixStream,
    /// A second descriptor of `stream`, which also receives the descriptor
    /// of a new connection.
    reader: FdReader,
    frames: FrameReader,
    writer: FrameWriter,
}

impl Conn {
    fn new(stream: UnixStream) -> io::Result<Conn> {
        let reader = FdReader::new(stream.try_clone()?);
        Ok(Conn {
            fd: stream.as_raw_fd(),
            inner: Mutex::new(ConnInner {
                stream,
                reader,
                frames: FrameReader::new(MANAGER_CAP),
                writer: FrameWriter::new(MANAGER_CAP),
            }),
        })
    }

    fn call(&self, request: &Request) -> Result<Response> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let ConnInner {
            stream,
            reader,
            frames,
            writer,
        } = &mut *guard;
        let frame = writer.encode(request).map_err(|e| {
            Error::new(ErrorKind::MessageCodec {
                what: "manager",
                encode: true,
                type_name: type_name::<Request>(),
                message: match e {
                    EncodeError::OverCap { len, cap } => {
                        format!("a request of {len} bytes is over the cap of {cap} bytes")
                    }
                    EncodeError::Codec(why) => why,
                },
            })
        })?;
        if stream.write_all(frame).is_err() {
            return Err(Error::new(ErrorKind::Disconnected { what: "manager" }));
        }
        match frames.read_message::<Response, _>(reader, None) {
            Ok(Some(Response::Failed(message))) => Err(Error::new(ErrorKind::Protocol(message))),
            Ok(Some(r)) => Ok(r),
            Ok(None) | Err(FrameError::Closed | FrameError::Io(_)) => {
                Err(Error::new(ErrorKind::Disconnected { what: "manager" }))
            }
            Err(e) => Err(Error::new(ErrorKind::Protocol(
                e.describe("manager's broker"),
            ))),
        }
    }

    /// A new connection to the same broker.
    fn connect(&self) -> Result<Conn> {
        match self.call(&Request::Connect)? {
            Response::Connection => {
                let fd = {
                    let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                    guard
                        .reader
                        .take_fds(1)
                        .map_err(|e| Error::new(ErrorKind::Protocol(e.to_string())))?
                };
                let stream = UnixStream::from(fd.into_iter().next().expect("one descriptor"));
                Conn::new(stream).map_err(|source| {
                    Error::new(ErrorKind::Io {
                        what: "connecting to a manager",
                        source,
                    })
                })
            }
            _ => Err(Error::new(ErrorKind::Protocol(
                "unexpected reply to connect".to_owned(),
            ))),
        }
    }

    fn serialize_as<S: Serializer>(
        &self,
        id: u32,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeTuple};
        let conn = self.connect().map_err(S::Error::custom)?;
        let guard = conn.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&id)?;
        t.serialize_element(&FdRef(guard.stream.as_fd()))?;
        t.end()
    }
}

struct FdRef<'a>(std::os::fd::BorrowedFd<'a>);

impl Serialize for FdRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        fdpass::serialize_fd(self.0, serializer)
    }
}

struct FdOwned(OwnedFd);

impl<'de> Deserialize<'de> for FdOwned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        fdpass::deserialize_fd(deserializer).map(FdOwned)
    }
}

fn deserialize_handle<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<(u32, Conn), D::Error> {
    let (id, FdOwned(fd)) = <(u32, FdOwned)>::deserialize(deserializer)?;
    let conn = Conn::new(UnixStream::from(fd)).map_err(serde::de::Error::custom)?;
    Ok((id, conn))
}

/// Hosts shared containers for several processes: Python's
/// `multiprocessing.Manager()`.
///
/// ```ignore
/// let manager = Manager::new()?;
/// let scores: SharedMap<String, u64> = manager.map()?;
/// pool.map(record, names.into_iter().map(|n| (scores.clone(), n)))?;
/// ```
///
/// The containers live in a thread of this process and stay available as
/// long as any handle to them exists (in any process). Each operation is a
/// round trip to that thread (see the module docs for the cost).
///
/// The thread trusts no handle: a request is at most 1 GiB encoded, and a
/// connection that sends something else (a longer one, bytes that are not
/// a request, a request cut short) is closed; one that stalls inside a
/// request or does not read its replies holds up no other handle.
pub struct Manager {
    conn: Arc<Conn>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl Manager {
    /// Starts a manager (its broker thread).
    ///
    /// # Errors
    ///
    /// [`Io`](ErrorKind::Io) if the socket or the thread cannot be created.
    pub fn new() -> Result<Manager> {
        let io = |source| {
            Error::new(ErrorKind::Io {
                what: "starting a manager",
                source,
            })
        };
        let (ours, theirs) = crate::sys::socket_pair().map_err(io)?;
        std::thread::Builder::new()
            .name("multiproc-manager".to_owned())
            .spawn(move || broker(theirs))
            .map_err(io)?;
        Ok(Manager {
            conn: Arc::new(Conn::new(ours).map_err(io)?),
        })
    }

    /// A new, empty shared map.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) if the broker is gone;
    /// [`Protocol`](ErrorKind::Protocol) if its reply is not one.
    pub fn map<K, V>(&self) -> Result<SharedMap<K, V>> {
        match self.conn.call(&Request::NewMap)? {
            Response::Object(id) => Ok(SharedMap {
                conn: self.conn.connect()?,
                id,
                _types: PhantomData,
            }),
            _ => Err(Error::new(ErrorKind::Protocol(
                "unexpected reply".to_owned(),
            ))),
        }
    }

    /// A new, empty shared list.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) if the broker is gone;
    /// [`Protocol`](ErrorKind::Protocol) if its reply is not one.
    pub fn list<T>(&self) -> Result<SharedList<T>> {
        match self.conn.call(&Request::NewList)? {
            Response::Object(id) => Ok(SharedList {
                conn: self.conn.connect()?,
                id,
                _types: PhantomData,
            }),
            _ => Err(Error::new(ErrorKind::Protocol(
                "unexpected reply".to_owned(),
            ))),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    crate::codec::encode_vec(value).map_err(|message| {
        Error::new(ErrorKind::MessageCodec {
            what: "manager",
            encode: true,
            type_name: type_name::<T>(),
            message,
        })
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    crate::codec::decode_exact(bytes).map_err(|message| {
        Error::new(ErrorKind::MessageCodec {
            what: "manager",
            encode: false,
            type_name: type_name::<T>(),
            message,
        })
    })
}

fn unexpected<T>() -> Result<T> {
    Err(Error::new(ErrorKind::Protocol(
        "unexpected reply from the manager".to_owned(),
    )))
}

/// Marks the key and value types without owning either (keeps the handle
/// `Send + Sync` whatever `K` and `V` are).
type MapTypes<K, V> = fn(K, V) -> (K, V);

/// A map shared between processes, hosted by a [`Manager`]. Clone it or
/// pass it to workers; every handle sees the same data.
///
/// Keys are compared by their postcard encoding; iteration order is the
/// order of those bytes, not of `K`.
pub struct SharedMap<K, V> {
    conn: Conn,
    id: u32,
    _types: PhantomData<MapTypes<K, V>>,
}

/// A list shared between processes, hosted by a [`Manager`]. Clone it or
/// pass it to workers; every handle sees the same data.
pub struct SharedList<T> {
    conn: Conn,
    id: u32,
    _types: PhantomData<fn(T) -> T>,
}

macro_rules! handle_impls {
    ($name:ident <$($p:ident),*>) => {
        impl<$($p),*> std::fmt::Debug for $name<$($p),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("id", &self.id)
                    .field("fd", &self.conn.fd)
                    .finish()
            }
        }

        impl<$($p),*> Clone for $name<$($p),*> {
            /// Opens a new connection to the manager.
            ///
            /// # Panics
            ///
            /// If the manager is gone.
            fn clone(&self) -> Self {
                let conn = self.conn.connect().expect("connecting to the manager");
                $name { conn, id: self.id, _types: PhantomData }
            }
        }

        impl<$($p),*> Serialize for $name<$($p),*> {
            fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                self.conn.serialize_as(self.id, serializer)
            }
        }

        impl<'de, $($p),*> Deserialize<'de> for $name<$($p),*> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                let (id, conn) = deserialize_handle(deserializer)?;
                Ok($name { conn, id, _types: PhantomData })
            }
        }
    };
}

handle_impls!(SharedMap<K, V>);
handle_impls!(SharedList<T>);

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> SharedMap<K, V> {
    fn op(&self, op: MapOp) -> Result<Response> {
        self.conn.call(&Request::Map(self.id, op))
    }

    /// The value for `key`, if any.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) if the manager is gone;
    /// [`MessageCodec`](ErrorKind::MessageCodec) if a value cannot be
    /// encoded or decoded, or a request would be over 1 GiB encoded;
    /// [`Protocol`](ErrorKind::Protocol) if the broker's reply is not one
    /// (over 1 GiB, cut short, or not a reply), or the broker could not
    /// serve the request (a reply would be over 1 GiB).
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        match self.op(MapOp::Get(encode(key)?))? {
            Response::Value(v) => v.map(|b| decode(&b)).transpose(),
            _ => unexpected(),
        }
    }

    /// Sets `key` to `value`; returns the previous value.
    ///
    /// # Errors
    ///
    /// As [`get`](SharedMap::get).
    pub fn insert(&self, key: &K, value: &V) -> Result<Option<V>> {
        match self.op(MapOp::Insert(encode(key)?, encode(value)?))? {
            Response::Value(v) => v.map(|b| decode(&b)).transpose(),
            _ => unexpected(),
        }
    }

    /// Removes `key`; returns its value.
    ///
    /// # Errors
    ///
    /// As [`get`](SharedMap::get).
    pub fn remove(&self, key: &K) -> Result<Option<V>> {
        match self.op(MapOp::Remove(encode(key)?))? {
            Response::Value(v) => v.map(|b| decode(&b)).transpose(),
            _ => unexpected(),
        }
    }

    /// `true` if `key` is present.
    ///
    /// # Errors
    ///
    /// As [`get`](SharedMap::get).
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        match self.op(MapOp::Contains(encode(key)?))? {
            Response::Flag(b) => Ok(b),
            _ => unexpected(),
        }
    }

    /// Number of entries.
    ///
    /// # Errors
    ///
    /// As [`get`](SharedMap::get).
    pub fn len(&self) -> Result<usize> {
        match self.op(MapOp::Len)? {
            Response::Len(n) => Ok(n as usize),
            _ => unexpected(),
        }
    }

    /// `true` if the map has no entries.
    ///
    /// # Errors
    ///
    /// As [`get`](SharedMap::get).
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// A snapshot of every entry.
    ///
    /// # Errors
    ///
    /// As [`get`](SharedMap::get).
    pub fn to_vec(&self) -> Result<Vec<(K, V)>> {
        match self.op(MapOp::Items)? {
            Response::Items(items) => items
                .iter()
                .map(|(k, v)| Ok((decode(k)?, decode(v)?)))
                .collect(),
            _ => unexpected(),
        }
    }

    /// Removes every entry.
    ///
    /// # Errors
    ///
    /// As [`get`](SharedMap::get).
    pub fn clear(&self) -> Result<()> {
        self.op(MapOp::Clear).map(|_| ())
    }
}

impl<T: Serialize + DeserializeOwned> SharedList<T> {
    fn op(&self, op: ListOp) -> Result<Response> {
        self.conn.call(&Request::List(self.id, op))
    }

    /// Appends `value`.
    ///
    /// # Errors
    ///
    /// [`Disconnected`](ErrorKind::Disconnected) if the manager is gone;
    /// [`MessageCodec`](ErrorKind::MessageCodec) if a value cannot be
    /// encoded or decoded, or a request would be over 1 GiB encoded;
    /// [`Protocol`](ErrorKind::Protocol) if the broker's reply is not one
    /// (over 1 GiB, cut short, or not a reply), or the broker could not
    /// serve the request (a reply would be over 1 GiB).
    pub fn push(&self, value: &T) -> Result<()> {
        self.op(ListOp::Push(encode(value)?)).map(|_| ())
    }

    /// Removes and returns the last element.
    ///
    /// # Errors
    ///
    /// As [`push`](SharedList::push).
    pub fn pop(&self) -> Result<Option<T>> {
        match self.op(ListOp::Pop)? {
            Response::Value(v) => v.map(|b| decode(&b)).transpose(),
            _ => unexpected(),
        }
    }

    /// The element at `index`, if any.
    ///
    /// # Errors
    ///
    /// As [`push`](SharedList::push).
    pub fn get(&self, index: usize) -> Result<Option<T>> {
        match self.op(ListOp::Get(index as u64))? {
            Response::Value(v) => v.map(|b| decode(&b)).transpose(),
            _ => unexpected(),
        }
    }

    /// Replaces the element at `index`.
    ///
    /// # Errors
    ///
    /// As [`push`](SharedList::push), and [`Protocol`](ErrorKind::Protocol)
    /// if `index` is out of range.
    pub fn set(&self, index: usize, value: &T) -> Result<()> {
        self.op(ListOp::Set(index as u64, encode(value)?))
            .map(|_| ())
    }

    /// Number of elements.
    ///
    /// # Errors
    ///
    /// As [`push`](SharedList::push).
    pub fn len(&self) -> Result<usize> {
        match self.op(ListOp::Len)? {
            Response::Len(n) => Ok(n as usize),
            _ => unexpected(),
        }
    }

    /// `true` if the list is empty.
    ///
    /// # Errors
    ///
    /// As [`push`](SharedList::push).
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// A snapshot of every element, in order.
    ///
    /// # Errors
    ///
    /// As [`push`](SharedList::push).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match self.op(ListOp::All)? {
            Response::Values(values) => values.iter().map(|b| decode(b)).collect(),
            _ => unexpected(),
        }
    }

    /// Removes every element.
    ///
    /// # Errors
    ///
    /// As [`push`](SharedList::push).
    pub fn clear(&self) -> Result<()> {
        self.op(ListOp::Clear).map(|_| ())
    }
}
