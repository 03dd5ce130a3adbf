//! The guardian: a child process that creates and removes every uprobe, so that no
//! uprobe is ever (un)registered by a task that is being killed.
//!
//! Why: the kernel writes and removes a uprobe's int3 with a page walk that gives up
//! when the calling task has a SIGKILL pending. A `kill -9` of detector that lands
//! while one of its threads is inside that walk makes the kernel log "failed to
//! unregister, leaking uprobe" and leave the int3 in the target (measured: 35 of 196
//! kills in the soak). So detector never makes those calls itself:
//! - the guardian opens each uprobe (`uprobe::open`) and sends detector a duplicate of
//!   its descriptor over a socket; detector links its program to it and closes the
//!   duplicate, so the uprobe lives as long as the guardian's descriptor;
//! - to remove a probe, detector closes its link (which never touches the target's
//!   text) and asks the guardian to close its descriptor: the last reference, whose
//!   release removes the int3 in the guardian;
//! - when detector goes away for any reason, SIGKILL included, the guardian reads the
//!   end of its socket, closes every descriptor it holds, and exits.
//!
//! - uprobe_multi links (see `multi`) register their uprobes in the task that creates
//!   them and unregister them in the task that closes the last reference, so the
//!   guardian creates them too, from a duplicate of detector's program descriptor, and
//!   sends detector a duplicate of the link, closed the same way as an event's: the
//!   guardian's close is the last one, and if the guardian dies, detector's keeps
//!   the probes in.
//!
//! The guardian runs this same executable (`/proc/self/exe __guardian --for PID`) in
//! its own session, so a terminal's ^C does not reach it, and it ignores SIGINT,
//! SIGTERM and SIGHUP: it leaves only once detector has (which a service manager's
//! stop signal makes happen). If the guardian cannot start, or dies, detector makes
//! the calls itself, as before, and says so once.
use std::{
    collections::HashMap,
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::Duration,
};

use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::uprobe;

/// The subcommand that runs the guardian (hidden: detector starts it itself).
pub const SUBCOMMAND: &str = "__guardian";
/// The descriptor the guardian finds its socket on.
const SOCKET_FD: RawFd = 3;
/// Signals the guardian ignores: it leaves when detector has gone, not before.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
/// Ids in one CLOSE_MANY message (its size stays well under the socket's buffer).
const MAX_IDS_PER_MESSAGE: usize = 4096;
/// Offsets in one OPEN_MULTI message (16 bytes each, and the path).
pub const MAX_MULTI_OFFSETS: usize = 2048;
/// The largest message the guardian reads.
const MAX_REQUEST: usize = 64 * 1024;
/// Threads the guardian closes descriptors on at once.
const CLOSE_THREADS: usize = 16;
/// How long detector waits for a new guardian to say it is ready.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages, one per SOCK_SEQPACKET datagram; integers little-endian.
mod msg {
    /// guardian → detector, once at start: protocol version (u32).
    pub const HELLO: u8 = b'G';
    /// detector → guardian: pid (i32, -1 = every process), offset (u64), path (rest).
    pub const OPEN: u8 = b'O';
    /// guardian → detector: the probe's id (u64), its descriptor attached.
    pub const OPENED: u8 = b'K';
    /// guardian → detector: the open failed with this errno (i32).
    pub const FAILED: u8 = b'E';
    /// detector → guardian: close the probe with this id (u64).
    pub const CLOSE: u8 = b'C';
    /// guardian → detector: closed (the int3 is gone).
    pub const CLOSED: u8 = b'c';
    /// detector → guardian: detector is leaving cleanly (its links are closed).
    pub const BYE: u8 = b'B';
    /// detector → guardian: create a uprobe_multi link: pid (i32, -1 = every
    /// process), count (u32), offsets (u64 each), cookies (u64 each), path (rest);
    /// the program's descriptor attached. Replies OPENED (the link's descriptor
    /// attached) or FAILED.
    pub const OPEN_MULTI: u8 = b'M';
    /// detector → guardian: close the probes with these ids (u64 each) side by side;
    /// replies CLOSED once all are.
    pub const CLOSE_MANY: u8 = b'D';
    pub const VERSION: u32 = 1;
}

/// detector's side: a connection to its guardian.
pub struct Guardian {
    /// One request and its reply at a time.
    socket: Mutex<OwnedFd>,
    child: Mutex<Option<Child>>,
    /// Set once the guardian is found dead; detector then works without it.
    lost: AtomicBool,
}

/// A uprobe opened by the guardian: a duplicate of its descriptor, and the id that
/// closes the guardian's own.
pub struct Opened {
    pub event: OwnedFd,
    pub id: u64,
}

impl Guardian {
    /// Starts the guardian and waits for it to be ready.
    pub fn start() -> io::Result<Guardian> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("detector")
            .args([SUBCOMMAND, "--for", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let theirs_raw = theirs.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if theirs_raw == SOCKET_FD {
                    if libc::fcntl(SOCKET_FD, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_raw, SOCKET_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Its own session: signals for detector's process group skip it.
                libc::setsid();
                // Ignored from before exec (dispositions to ignore survive it), so
                // there is no moment at which a stop signal could kill it mid-way.
                for sig in STOP_SIGNALS {
                    libc::signal(sig, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(theirs);
        let g = Guardian {
            socket: Mutex::new(ours),
            child: Mutex::new(Some(child)),
            lost: AtomicBool::new(false),
        };
        if let Err(e) = g.await_hello() {
            // Not a working guardian: make sure it is gone before dropping it, since
            // dropping waits for it to exit.
            if let Some(mut child) = g.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(e);
        }
        Ok(g)
    }

    fn await_hello(&self) -> io::Result<()> {
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        set_recv_timeout(socket.as_fd(), Some(HELLO_TIMEOUT))?;
        let mut buf = [0u8; 16];
        let (n, _) = receive(socket.as_fd(), &mut buf)?;
        set_recv_timeout(socket.as_fd(), None)?;
        if n != 5 || buf[0] != msg::HELLO || u32_at(&buf, 1) != Some(msg::VERSION) {
            return Err(io::Error::other("the guardian did not say hello"));
        }
        Ok(())
    }

    /// Whether the guardian has been found dead.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Whether the guardian still runs (checked now, without talking to it).
    pub fn is_running(&self) -> bool {
        if self.is_lost() {
            return false;
        }
        let exited = match self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        };
        if exited {
            self.lose(&io::Error::other("it exited"));
        }
        !exited
    }

    fn lose(&self, why: &io::Error) {
        if !self.lost.swap(true, Ordering::Relaxed) {
            log::warn!(
                "the probe guardian is gone ({why}); detector now creates and removes uprobes itself, \
                 so a SIGKILL at the wrong moment can leave a breakpoint in a target"
            );
        }
    }

    /// Asks the guardian to create a uprobe (see [`uprobe::open`]). `Err(None)` when
    /// the guardian is gone (the caller opens the probe itself).
    pub fn open(
        &self,
        path: &Path,
        offset: u64,
        pid: Option<u32>,
    ) -> Result<Opened, Option<io::Error>> {
        if self.is_lost() {
            return Err(None);
        }
        let mut req = vec![msg::OPEN];
        req.extend_from_slice(&pid.map_or(-1, |p| p as i32).to_le_bytes());
        req.extend_from_slice(&offset.to_le_bytes());
        req.extend_from_slice(path.as_os_str().as_bytes());
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = [0u8; 16];
        let reply =
            send(socket.as_fd(), &req, None).and_then(|_| receive(socket.as_fd(), &mut buf));
        let (n, fd) = match reply {
            Ok(r) => r,
            Err(e) => {
                self.lose(&e);
                return Err(None);
            }
        };
        match (buf[0], n, fd) {
            (msg::OPENED, 9, Some(event)) => Ok(Opened {
                event,
                id: u64_at(&buf, 1).unwrap_or_default(),
            }),
            (msg::FAILED, 5, _) => Err(Some(io::Error::from_raw_os_error(
                u32_at(&buf, 1).unwrap_or_default() as i32,
            ))),
            _ => {
                let e = io::Error::other("the guardian sent a malformed reply");
                self.lose(&e);
                Err(None)
            }
        }
    }

    /// Asks the guardian to create a uprobe_multi link of `prog` (see
    /// [`uprobe::link_multi`]): a duplicate of the link, and the id that closes the
    /// guardian's. `Err(None)` when the guardian is gone.
    pub fn open_multi(
        &self,
        prog: BorrowedFd<'_>,
        path: &Path,
        offsets: &[u64],
        cookies: &[u64],
        pid: Option<u32>,
    ) -> Result<Opened, Option<io::Error>> {
        if self.is_lost() {
            return Err(None);
        }
        let mut req = vec![msg::OPEN_MULTI];
        req.extend_from_slice(&pid.map_or(-1, |p| p as i32).to_le_bytes());
        req.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
        for v in offsets.iter().chain(cookies) {
            req.extend_from_slice(&v.to_le_bytes());
        }
        req.extend_from_slice(path.as_os_str().as_bytes());
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = [0u8; 16];
        let reply =
            send(socket.as_fd(), &req, Some(prog)).and_then(|_| receive(socket.as_fd(), &mut buf));
        match reply {
            Ok((9, Some(event))) if buf[0] == msg::OPENED => Ok(Opened {
                event,
                id: u64_at(&buf, 1).unwrap_or_default(),
            }),
            Ok((5, None)) if buf[0] == msg::FAILED => Err(Some(io::Error::from_raw_os_error(
                u32_at(&buf, 1).unwrap_or_default() as i32,
            ))),
            Ok(_) => {
                let e = io::Error::other("the guardian sent a malformed reply");
                self.lose(&e);
                Err(None)
            }
            Err(e) => {
                self.lose(&e);
                Err(None)
            }
        }
    }

    /// Asks the guardian to close every probe in `ids` side by side (their grace
    /// periods overlap), and waits until it has. Returns how long the request waited
    /// for the guardian (it serves one at a time) before it was sent.
    pub fn close_many(&self, ids: &[u64]) -> Duration {
        let t0 = std::time::Instant::now();
        let mut queued = None;
        if self.is_lost() || ids.is_empty() {
            return Duration::ZERO;
        }
        for chunk in ids.chunks(MAX_IDS_PER_MESSAGE) {
            let mut req = vec![msg::CLOSE_MANY];
            for id in chunk {
                req.extend_from_slice(&id.to_le_bytes());
            }
            let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
            let queued = *queued.get_or_insert_with(|| t0.elapsed());
            let mut buf = [0u8; 4];
            match send(socket.as_fd(), &req, None).and_then(|_| receive(socket.as_fd(), &mut buf)) {
                Ok((1, None)) if buf[0] == msg::CLOSED => {}
                Ok(_) => {
                    self.lose(&io::Error::other("the guardian sent a malformed reply"));
                    return queued;
                }
                Err(e) => {
                    self.lose(&e);
                    return queued;
                }
            }
        }
        queued.unwrap_or_default()
    }

    /// Asks the guardian to close probe `id`, and waits until it has: the breakpoint
    /// is gone from the target when this returns (unless the guardian is).
    pub fn close(&self, id: u64) {
        if self.is_lost() {
            return;
        }
        let mut req = vec![msg::CLOSE];
        req.extend_from_slice(&id.to_le_bytes());
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = [0u8; 4];
        match send(socket.as_fd(), &req, None).and_then(|_| receive(socket.as_fd(), &mut buf)) {
            Ok((1, None)) if buf[0] == msg::CLOSED => {}
            Ok(_) => self.lose(&io::Error::other("the guardian sent a malformed reply")),
            Err(e) => self.lose(&e),
        }
    }
}

impl Drop for Guardian {
    /// Ends the connection; the guardian closes whatever it still holds and exits,
    /// and detector waits for that, so nothing of it outlives a clean exit.
    fn drop(&mut self) {
        let socket = self.socket.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = send(socket.as_fd(), &[msg::BYE], None);
        let _ = rustix::net::shutdown(socket.as_fd(), rustix::net::Shutdown::Both);
        if let Some(mut child) = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = child.wait();
        }
    }
}

/// Sends one message, with `fd` attached when given.
fn send(socket: BorrowedFd<'_>, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    loop {
        match sendmsg(
            socket,
            &[IoSlice::new(data)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message into `buf`: its length and the descriptor attached, if any.
/// The end of the connection is an error (UnexpectedEof).
fn receive(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match recvmsg(
            socket,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => break got,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                // More than one descriptor is a protocol error: keep the first.
                fd.get_or_insert(f);
            }
        }
    }
    if got.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other side closed the connection",
        ));
    }
    Ok((got.bytes.min(buf.len()), fd))
}

fn set_recv_timeout(socket: BorrowedFd<'_>, t: Option<Duration>) -> io::Result<()> {
    rustix::net::sockopt::set_socket_timeout(socket, rustix::net::sockopt::Timeout::Recv, t)
        .map_err(io::Error::from)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The guardian's main loop (`detector __guardian`): serves one detector until it
/// goes away, then closes every uprobe it still holds. Returns the exit code.
pub fn serve() -> crate::exit::Code {
    // SAFETY: fd 3 is only borrowed until it is known to be open and a socket.
    let is_ours = unsafe { libc::fcntl(SOCKET_FD, libc::F_GETFD) } >= 0
        && rustix::net::sockopt::socket_type(unsafe { BorrowedFd::borrow_raw(SOCKET_FD) })
            == Ok(SocketType::SEQPACKET);
    if !is_ours {
        use std::io::Write;
        let _ = writeln!(
            io::stderr(),
            "detector: error: `{SUBCOMMAND}` is started by detector itself, not by hand"
        );
        return crate::exit::Code::Usage;
    }
    // SAFETY: fd 3 is the socket `Guardian::start` passed, and ours alone.
    let socket = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
    for sig in STOP_SIGNALS.into_iter().chain([libc::SIGPIPE]) {
        // SAFETY: setting a signal to be ignored.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // Its process name (comm, as `top` and `pkill` see it): deliberately not matching
    // `pkill -9 detector`, which would kill it along with detector and defeat it.
    let _ = rustix::thread::set_name(c"probe-guardian");
    let _ = raise_nofile_limit();
    let detector = watch_parent();
    let mut held: HashMap<u64, OwnedFd> = HashMap::new();
    let mut next_id = 1u64;
    let mut hello = vec![msg::HELLO];
    hello.extend_from_slice(&msg::VERSION.to_le_bytes());
    let mut talking = send(socket.as_fd(), &hello, None).is_ok();
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut bye = false;
    while talking {
        let (n, passed) = match receive(socket.as_fd(), &mut buf) {
            Ok(got) => got,
            Err(_) => break,
        };
        let req = &buf[..n];
        talking = match req.first() {
            Some(&msg::OPEN_MULTI) if n >= 9 => {
                let result = match (passed, parse_open_multi(req)) {
                    (Some(prog), Some((pid, offsets, cookies, path))) => {
                        uprobe::link_multi(prog.as_fd(), path, &offsets, &cookies, pid)
                    }
                    _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
                };
                answer_open(socket.as_fd(), &mut held, &mut next_id, result)
            }
            Some(&msg::CLOSE_MANY) if (n - 1) % 8 == 0 => {
                let fds: Vec<OwnedFd> = req[1..]
                    .chunks_exact(8)
                    .filter_map(|c| held.remove(&u64::from_le_bytes(c.try_into().ok()?)))
                    .collect();
                close_side_by_side(fds);
                send(socket.as_fd(), &[msg::CLOSED], None).is_ok()
            }
            Some(&msg::OPEN) if n >= 13 => {
                let pid = u32_at(req, 1).unwrap_or_default() as i32;
                let offset = u64_at(req, 5).unwrap_or_default();
                let path = Path::new(std::ffi::OsStr::from_bytes(&req[13..]));
                let pid = (pid >= 0).then_some(pid as u32);
                let result = uprobe::open(path, offset, pid);
                answer_open(socket.as_fd(), &mut held, &mut next_id, result)
            }
            Some(&msg::BYE) => {
                bye = true;
                false
            }
            Some(&msg::CLOSE) if n == 9 => {
                // Dropping the last reference unregisters the uprobe here, in a task
                // nobody is killing.
                if let Some(id) = u64_at(req, 1) {
                    held.remove(&id);
                }
                send(socket.as_fd(), &[msg::CLOSED], None).is_ok()
            }
            _ => false,
        };
    }
    // detector is gone (or broke the protocol): remove everything it left. Unless it
    // said goodbye, wait until it has fully exited first: its links are closed then,
    // so each close here is the last reference, and unregisters in this task.
    if !bye {
        if let Some(pidfd) = detector {
            wait_exit(pidfd.as_fd(), Duration::from_secs(10));
        }
    }
    close_side_by_side(held.into_values().collect());
    crate::exit::Code::NoFindings
}

/// Reads an OPEN_MULTI request: pid, offsets, cookies, path.
#[allow(clippy::type_complexity)]
fn parse_open_multi(req: &[u8]) -> Option<(Option<u32>, Vec<u64>, Vec<u64>, &Path)> {
    let pid = u32_at(req, 1)? as i32;
    let cnt = u32_at(req, 5)? as usize;
    let words = req.get(9..9 + cnt.checked_mul(16)?)?;
    let (offsets, cookies) = words.split_at(cnt * 8);
    let read = |b: &[u8]| -> Vec<u64> {
        b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    let path = Path::new(std::ffi::OsStr::from_bytes(req.get(9 + cnt * 16..)?));
    Some((
        (pid >= 0).then_some(pid as u32),
        read(offsets),
        read(cookies),
        path,
    ))
}

/// Closes `fds` on several threads at once: each last close of a uprobe (or link)
/// waits for the kernel's grace periods, and waits that overlap end together.
/// Answers an OPEN or OPEN_MULTI: on success the new descriptor (a perf event or a
/// link) is held under the next id and a copy sent with OPENED; else FAILED with the
/// errno. False when detector could not be told.
fn answer_open(
    socket: BorrowedFd<'_>,
    held: &mut HashMap<u64, OwnedFd>,
    next_id: &mut u64,
    result: io::Result<OwnedFd>,
) -> bool {
    match result {
        Ok(fd) => {
            let id = *next_id;
            *next_id += 1;
            let mut reply = vec![msg::OPENED];
            reply.extend_from_slice(&id.to_le_bytes());
            let sent = send(socket, &reply, Some(fd.as_fd()));
            held.insert(id, fd);
            sent.is_ok()
        }
        Err(e) => {
            let mut reply = vec![msg::FAILED];
            reply.extend_from_slice(&e.raw_os_error().unwrap_or(libc::EIO).to_le_bytes());
            send(socket, &reply, None).is_ok()
        }
    }
}

fn close_side_by_side(fds: Vec<OwnedFd>) {
    if fds.len() <= 1 {
        drop(fds);
        return;
    }
    let per = fds.len().div_ceil(CLOSE_THREADS);
    let mut fds = fds;
    std::thread::scope(|s| {
        while !fds.is_empty() {
            let batch: Vec<OwnedFd> = fds.drain(..per.min(fds.len())).collect();
            // A thread that cannot start drops its closure, and the batch with it, here.
            let _ = std::thread::Builder::new().spawn_scoped(s, move || drop(batch));
        }
    });
}

/// A pidfd of the detector this guardian serves (`--for PID`), when it is still our
/// parent (so the pid has not been reused).
fn watch_parent() -> Option<OwnedFd> {
    let mut args = std::env::args().skip_while(|a| a != "--for").skip(1);
    let pid: libc::pid_t = args.next()?.parse().ok()?;
    // SAFETY: plain syscalls; the descriptor is ours alone.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd as RawFd);
        // Checked after opening: if the parent is still `pid`, the pidfd is its.
        (libc::getppid() == pid).then_some(fd)
    }
}

/// Waits (up to `limit`) until the process behind `pidfd` has exited.
fn wait_exit(pidfd: BorrowedFd<'_>, limit: Duration) {
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, limit.as_millis() as libc::c_int) };
}

/// Raises the soft limit on open files to the hard one. The guardian holds a
/// descriptor per live probe; `watch` keeps two per watched process. False when the
/// limit could not be read or set.
pub fn raise_nofile_limit() -> bool {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) != 0 {
            return false;
        }
        if rlim.rlim_cur < rlim.rlim_max {
            rlim.rlim_cur = rlim.rlim_max;
            return libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) == 0;
        }
    }
    true
}
