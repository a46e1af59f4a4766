//! `importer copy` failing cleanly: every case exits non-zero with exactly one line on stderr that
//! names the problem, never panics, prints no result, and leaves no target that could pass for a
//! finished copy. These copies run with `--retries 0`: a failure that retries would cure is
//! tests/faults.rs's subject. Servers are real peers, or a fake NBD server written here (after the NBD
//! project's doc/proto.md) that completes a valid handshake and then breaks the protocol.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use test_kit::*;

const MIB: usize = 1 << 20;

/// `importer copy --retries 0 URI TARGET`.
fn copy(uri: &str, target: &Path) -> Out {
    importer(&["copy", "--retries", "0", uri, s(target)])
}

#[test]
fn unknown_source_scheme_fails_naming_the_scheme() {
    let dir = tempdir();
    let target = dir.path().join("target.img");

    let out = copy("foo://x", &target);

    out.assert_clean_failure(&["unknown source scheme 'foo'"]);
    assert!(!target.exists(), "no target is created for a bad source");
}

#[test]
fn missing_unix_socket_fails_to_connect() {
    let dir = tempdir();
    let sock = dir.path().join("nobody.sock");
    let target = dir.path().join("target.img");

    let out = copy(&format!("nbd+unix:///?socket={}", s(&sock)), &target);

    out.assert_clean_failure(&["cannot connect to NBD server", s(&sock)]);
    assert!(!target.exists());
}

#[test]
fn unix_socket_nobody_listens_on_fails_to_connect() {
    let dir = tempdir();
    let sock = dir.path().join("stale.sock");
    // A socket file whose listener is gone: connecting is refused.
    drop(UnixListener::bind(&sock).expect("binding a socket"));
    let target = dir.path().join("target.img");

    let out = copy(&format!("nbd+unix:///?socket={}", s(&sock)), &target);

    out.assert_clean_failure(&["cannot connect to NBD server", "Connection refused"]);
    assert!(!target.exists());
}

#[test]
fn tcp_port_without_listener_fails_to_connect() {
    let dir = tempdir();
    let port = free_tcp_port();
    let target = dir.path().join("target.img");

    let out = copy(&format!("nbd://127.0.0.1:{port}/disk"), &target);

    out.assert_clean_failure(&[
        &format!("cannot connect to NBD server 127.0.0.1:{port}"),
        "Connection refused",
    ]);
    assert!(!target.exists());
}

#[test]
fn unknown_export_on_qemu_nbd_fails_naming_the_export() {
    if !require_peers(&["qemu-nbd", "qemu-img"]) {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.raw");
    run_ok("qemu-img", &["create", "-q", "-f", "raw", s(&image), "4M"]);
    let peer = Peer::qemu_nbd(&["-f", "raw", "-x", "disk", s(&image)]);
    let target = dir.path().join("target.img");

    let out = copy(&peer.uri_for("other"), &target);

    out.assert_clean_failure(&["unknown export", "'other'"]);
    assert!(!target.exists());
}

#[test]
fn unknown_export_on_nbd_server_fails_naming_the_export() {
    if !require_peer("nbd-server") {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.raw");
    write_file(&image, &vec![0x11; MIB]);
    let peer = Peer::nbd_server(&[("disk", &image)]);
    let target = dir.path().join("target.img");

    let out = copy(&peer.uri_for("other"), &target);

    out.assert_clean_failure(&["unknown export", "'other'"]);
    assert!(!target.exists());
}

#[test]
fn server_read_error_fails_naming_the_errno() {
    if !require_peer("nbdkit") {
        return;
    }
    let dir = tempdir();
    let peer = Peer::nbdkit(&[
        "--filter=error",
        "pattern",
        "size=16M",
        "error-pread=EIO",
        "error-pread-rate=100%",
    ]);
    let target = dir.path().join("target.img");

    let out = copy(&peer.uri(), &target);

    out.assert_clean_failure(&["NBD read at offset", "EIO"]);
    assert_no_complete_target(&target, &pattern_bytes(16 * MIB));
}

#[test]
fn server_read_error_in_a_simple_reply_fails_naming_the_errno() {
    if !require_peer("nbdkit") {
        return;
    }
    let dir = tempdir();
    let peer = Peer::nbdkit(&[
        "--no-sr",
        "--filter=error",
        "pattern",
        "size=16M",
        "error-pread=EIO",
        "error-pread-rate=100%",
    ]);
    let target = dir.path().join("target.img");

    let out = copy(&peer.uri(), &target);

    out.assert_clean_failure(&["NBD read at offset", "EIO"]);
    assert_no_complete_target(&target, &pattern_bytes(16 * MIB));
}

#[test]
fn server_error_after_half_the_disk_was_read_fails_naming_the_errno() {
    if !require_peer("nbdkit") {
        return;
    }
    let dir = tempdir();
    let size = 32 * MIB;
    let src = dir.path().join("source.raw");
    let bytes = disk_bytes(size, 11);
    write_file(&src, &bytes);
    // Reads below 16 MiB succeed, reads above fail with EIO: the error comes mid-copy, after
    // data has arrived, on every run.
    let pread = format!(
        "if [ \"$4\" -ge {} ]; then echo 'EIO injected past the middle' >&2; exit 1; fi; \
         exec dd if={} skip=\"$4\" count=\"$3\" iflag=skip_bytes,count_bytes status=none",
        size / 2,
        s(&src)
    );
    let peer = Peer::nbdkit(&[
        "eval",
        &format!("get_size=echo {size}"),
        &format!("pread={pread}"),
    ]);
    let target = dir.path().join("target.img");

    let out = copy(&peer.uri(), &target);

    out.assert_clean_failure(&["NBD read at offset", "EIO"]);
    assert_no_complete_target(&target, &bytes);
}

#[test]
fn server_killed_mid_copy_fails_with_a_disconnect() {
    if !require_peer("nbdkit") {
        return;
    }
    let dir = tempdir();
    let log = dir.path().join("nbdkit.log");
    // The log filter records each read as it arrives; the delay filter holds every read far
    // longer than the test takes, so the server dies with all of them in flight.
    let mut peer = Peer::nbdkit(&[
        "--filter=log",
        "--filter=delay",
        "pattern",
        "size=16M",
        &format!("logfile={}", s(&log)),
        "delay-read=30",
    ]);
    let target = dir.path().join("target.img");
    let run = spawn_importer(&[
        "copy",
        "--retries",
        "0",
        "--connections",
        "1",
        "--requests",
        "4",
        &peer.uri(),
        s(&target),
    ]);
    // Once all four reads have arrived, the importer sends nothing more until one completes:
    // the kill is noticed by reading, the same way on every run.
    wait_for_lines(&log, " Read id=", 4);

    peer.kill();
    let out = run.finish();

    out.assert_clean_failure(&["NBD server unix:", "server closed the connection"]);
    assert_no_complete_target(&target, &pattern_bytes(16 * MIB));
}

/// Waits until `count` lines of the file at `path` contain `needle`.
fn wait_for_lines(path: &Path, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    };
    while seen() < count {
        assert!(
            Instant::now() < deadline,
            "the server logged {} of {count} lines with {needle:?}",
            seen()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// A fake NBD server. Constants and layouts are taken from the NBD protocol document (not from
// the client under test), so the client is checked against the specification.

/// "NBDMAGIC".
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT".
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
const NBD_OPT_GO: u32 = 7;
const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
const NBD_OPT_SET_META_CONTEXT: u32 = 10;
const NBD_REP_ACK: u32 = 1;
const NBD_REP_INFO: u32 = 3;
const NBD_REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const NBD_INFO_EXPORT: u16 = 0;
const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
const NBD_STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;
const NBD_REPLY_TYPE_NONE: u16 = 0;
const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
const NBD_CMD_READ: u16 = 0;

/// Size of the fake export; it would hold [`FAKE_BYTE`] everywhere.
const FAKE_SIZE: usize = 4 * MIB;
const FAKE_BYTE: u8 = 0xa5;

/// How the fake server breaks the protocol in its first reply.
#[derive(Clone, Copy, Debug)]
enum Violation {
    /// A reply whose magic is neither simple nor structured.
    BadMagic,
    /// A well-formed final chunk for a cookie that was never sent.
    UnknownCookie,
    /// An OFFSET_DATA chunk for the request's cookie, placed just past the requested range.
    DataOutsideRequest,
}

/// The first request the fake server received, after the handshake.
#[derive(Debug)]
struct SeenRequest {
    cmd: u16,
    offset: u64,
    len: u32,
    structured: bool,
}

fn be16(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}
fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}
fn be64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn read_array<const N: usize>(conn: &mut UnixStream) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    conn.read_exact(&mut b)?;
    Ok(b)
}

fn option_reply(
    conn: &mut UnixStream,
    option: u32,
    reply: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend(be64(OPT_REPLY_MAGIC));
    m.extend(be32(option));
    m.extend(be32(reply));
    m.extend(be32(data.len() as u32));
    m.extend(data);
    conn.write_all(&m)
}

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Fixed-newstyle handshake ending in NBD_OPT_GO: structured replies are accepted, no meta
/// context is selected (so the client reads without asking for block status), and the export
/// is read-only without multi-conn. Returns whether structured replies were negotiated.
fn handshake(conn: &mut UnixStream) -> std::io::Result<bool> {
    let mut greeting = Vec::new();
    greeting.extend(be64(NBDMAGIC));
    greeting.extend(be64(IHAVEOPT));
    greeting.extend(be16(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
    conn.write_all(&greeting)?;
    let client_flags = u32::from_be_bytes(read_array(conn)?);
    if client_flags & NBD_FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(bad(format!("client flags {client_flags:#x}")));
    }
    let mut structured = false;
    loop {
        let magic = u64::from_be_bytes(read_array(conn)?);
        if magic != IHAVEOPT {
            return Err(bad(format!("option magic {magic:#x}")));
        }
        let option = u32::from_be_bytes(read_array(conn)?);
        let len = u32::from_be_bytes(read_array(conn)?);
        let mut data = vec![0u8; len as usize];
        conn.read_exact(&mut data)?;
        match option {
            NBD_OPT_STRUCTURED_REPLY => {
                structured = true;
                option_reply(conn, option, NBD_REP_ACK, &[])?;
            }
            NBD_OPT_SET_META_CONTEXT => option_reply(conn, option, NBD_REP_ACK, &[])?,
            NBD_OPT_GO => {
                let mut info = Vec::new();
                info.extend(be16(NBD_INFO_EXPORT));
                info.extend(be64(FAKE_SIZE as u64));
                info.extend(be16(NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY));
                option_reply(conn, option, NBD_REP_INFO, &info)?;
                option_reply(conn, option, NBD_REP_ACK, &[])?;
                return Ok(structured);
            }
            _ => option_reply(conn, option, NBD_REP_ERR_UNSUP, &[])?,
        }
    }
}

fn serve(conn: &mut UnixStream, violation: Violation) -> std::io::Result<SeenRequest> {
    let structured = handshake(conn)?;
    let req: [u8; 28] = read_array(conn)?;
    let magic = u32::from_be_bytes(req[0..4].try_into().unwrap());
    if magic != NBD_REQUEST_MAGIC {
        return Err(bad(format!("request magic {magic:#x}")));
    }
    let seen = SeenRequest {
        cmd: u16::from_be_bytes(req[6..8].try_into().unwrap()),
        offset: u64::from_be_bytes(req[16..24].try_into().unwrap()),
        len: u32::from_be_bytes(req[24..28].try_into().unwrap()),
        structured,
    };
    let cookie = u64::from_be_bytes(req[8..16].try_into().unwrap());
    let mut reply = Vec::new();
    let chunk_header = |reply: &mut Vec<u8>, kind: u16, cookie: u64, len: u32| {
        reply.extend(be32(NBD_STRUCTURED_REPLY_MAGIC));
        reply.extend(be16(NBD_REPLY_FLAG_DONE));
        reply.extend(be16(kind));
        reply.extend(be64(cookie));
        reply.extend(be32(len));
    };
    match violation {
        Violation::BadMagic => {
            reply.extend(be32(0xdead_beef));
            reply.extend([0u8; 16]);
        }
        Violation::UnknownCookie => {
            chunk_header(&mut reply, NBD_REPLY_TYPE_NONE, cookie ^ (1 << 63), 0);
        }
        Violation::DataOutsideRequest => {
            chunk_header(&mut reply, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + 4096);
            reply.extend(be64(seen.offset + seen.len as u64));
            reply.extend([FAKE_BYTE; 4096]);
        }
    }
    conn.write_all(&reply)?;
    // Swallow whatever else the client sends until it hangs up.
    let mut sink = [0u8; 64 << 10];
    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
    Ok(seen)
}

/// Accepts one connection, giving up after two minutes so that a client that never comes cannot
/// hang the test; the connection times out reads the same way.
fn accept_one(listener: &UnixListener) -> std::io::Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    Ok(conn)
}

/// Serves one connection on a new socket `dir/fake.sock`; returns the socket and the server
/// thread, which yields the first request it saw.
fn fake_server(
    dir: &Path,
    violation: Violation,
) -> (String, JoinHandle<std::io::Result<SeenRequest>>) {
    let sock = dir.join("fake.sock");
    let listener = UnixListener::bind(&sock).expect("binding the fake server");
    let thread = std::thread::spawn(move || serve(&mut accept_one(&listener)?, violation));
    (format!("nbd+unix:///?socket={}", s(&sock)), thread)
}

/// Runs a copy from a fake server that commits `violation`; asserts the failure is clean and
/// names `phrase`, and that it happened in reply to a read after a valid handshake.
fn assert_violation_fails_cleanly(violation: Violation, phrase: &str) {
    let dir = tempdir();
    let (uri, server) = fake_server(dir.path(), violation);
    let target = dir.path().join("target.img");

    let out = copy(&uri, &target);
    let seen = server
        .join()
        .expect("fake server thread")
        .expect("fake server");

    out.assert_clean_failure(&["NBD server unix:", phrase]);
    assert_eq!(seen.cmd, NBD_CMD_READ, "{seen:?}");
    assert!(seen.structured, "{seen:?}");
    assert_no_complete_target(&target, &vec![FAKE_BYTE; FAKE_SIZE]);
}

#[test]
fn reply_with_bad_magic_fails_as_a_protocol_error() {
    assert_violation_fails_cleanly(Violation::BadMagic, "bad reply magic");
}

#[test]
fn reply_with_unknown_cookie_fails_as_a_protocol_error() {
    assert_violation_fails_cleanly(Violation::UnknownCookie, "unknown cookie");
}

#[test]
fn data_chunk_outside_the_request_fails_as_a_protocol_error() {
    assert_violation_fails_cleanly(Violation::DataOutsideRequest, "outside the request");
}

#[test]
fn server_that_is_not_nbd_fails_as_not_an_nbd_server() {
    let dir = tempdir();
    let sock = dir.path().join("http.sock");
    let listener = UnixListener::bind(&sock).expect("binding a socket");
    let server = std::thread::spawn(move || {
        let mut conn = accept_one(&listener)?;
        conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")?;
        let mut sink = [0u8; 1024];
        while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
        std::io::Result::Ok(())
    });
    let target = dir.path().join("target.img");

    let out = copy(&format!("nbd+unix:///?socket={}", s(&sock)), &target);
    server.join().expect("server thread").expect("server");

    out.assert_clean_failure(&["not an NBD server"]);
    assert!(!target.exists());
}

#[test]
fn a_server_claiming_an_impossible_disk_size_is_refused_before_anything_is_planned() {
    if !require_peer("nbdkit") {
        return;
    }
    // 2 EiB: nbdkit serves it (its null plugin reads zeros), a sparse file on most filesystems
    // would take it, and a plan of it would exhaust memory.
    let server = Peer::nbdkit(&["null", "size=2E"]);
    let dir = tempdir();
    let target = dir.path().join("target.img");

    let started = Instant::now();
    let out = copy(&server.uri(), &target);

    out.assert_clean_failure(&["past the largest disk ferry copies", "256 TiB"]);
    assert!(!target.exists(), "no target is created");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "refused at once, not after planning: {:?}",
        started.elapsed()
    );
}
