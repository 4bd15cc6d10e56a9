#!/usr/bin/env python3
"""Writes the fuzz seed corpora (fuzz/corpus/HARNESS/) from the real records in
this folder (capture.jsonl, segment-*.jsonl.lz4 and manifest.jsonl, made by
capture.sh) and from the wire format (docs/wire-format.md): every event type,
every argument type, and truncated and corrupted variants of each input kind.
Deterministic: running it again writes the same files.
    fuzz/seeds/make-seeds.py
"""
import glob, hashlib, json, os, shutil, struct, subprocess, sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
corpus = os.path.join(root, 'fuzz', 'corpus')

def writer(harness):
    folder = os.path.join(corpus, harness)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    def put(name, data):
        if isinstance(data, str): data = data.encode()
        with open(os.path.join(folder, name), 'wb') as f: f.write(data)
    return put

capture = [line.rstrip('\n') for line in open(os.path.join(here, 'capture.jsonl'))]

# ---- wire records ------------------------------------------------------------
INT, STR, ARR, SOCK = 1, 10, 11, 12
OPEN, EXEC, DOM, TYPE, UNLINKAT, PTRACE, MOUNT, UMOUNT = 13, 14, 15, 16, 19, 23, 24, 25
PATH = STR  # FILE_TYPE_T travels as STR_T
EVENTS = {  # id: (name, argument names, wire tags), from docs/wire-format.md
    2: ('open', ['path', 'flags'], [PATH, OPEN]),
    3: ('close', ['fd'], [INT]),
    41: ('socket', ['domain', 'type', 'protocol'], [DOM, TYPE, INT]),
    42: ('connect', ['fd', 'addr'], [INT, SOCK]),
    43: ('accept', ['fd', 'addr'], [INT, SOCK]),
    49: ('bind', ['fd', 'addr'], [INT, SOCK]),
    50: ('listen', ['fd', 'backlog'], [INT, INT]),
    59: ('execve', ['path', 'argv'], [PATH, ARR]),
    84: ('rmdir', ['path'], [PATH]),
    87: ('unlink', ['path'], [PATH]),
    92: ('chown', ['path', 'uid', 'gid'], [PATH, INT, INT]),
    101: ('ptrace', ['request', 'pid'], [PTRACE, INT]),
    105: ('setuid', ['uid'], [INT]),
    106: ('setgid', ['gid'], [INT]),
    165: ('mount', ['source', 'target', 'fstype', 'flags', 'data'], [STR, STR, STR, MOUNT, STR]),
    166: ('umount', ['target', 'flags'], [STR, UMOUNT]),
    257: ('openat', ['dirfd', 'path', 'flags'], [INT, PATH, OPEN]),
    260: ('fchownat', ['dirfd', 'path', 'uid', 'gid', 'flags'], [INT, PATH, INT, INT, INT]),
    263: ('unlinkat', ['dirfd', 'path', 'flags'], [INT, PATH, UNLINKAT]),
    322: ('execveat', ['dirfd', 'path', 'argv', 'flags'], [INT, PATH, ARR, EXEC]),
}
BY_NAME = {name: (eid, names, tags) for eid, (name, names, tags) in EVENTS.items()}
FLAG_BITS = {
    'O_RDONLY': 0, 'O_WRONLY': 1, 'O_RDWR': 2, 'O_CREAT': 0o100, 'O_EXCL': 0o200, 'O_NOCTTY': 0o400,
    'O_TRUNC': 0o1000, 'O_APPEND': 0o2000, 'O_NONBLOCK': 0o4000, 'O_DIRECTORY': 0o200000,
    'O_NOFOLLOW': 0o400000, 'O_CLOEXEC': 0o2000000, 'O_PATH': 0o10000000, 'O_LARGEFILE': 0o100000,
    'SOCK_STREAM': 1, 'SOCK_DGRAM': 2, 'SOCK_RAW': 3, 'SOCK_SEQPACKET': 5, 'SOCK_NONBLOCK': 0o4000,
    'SOCK_CLOEXEC': 0o2000000, 'AF_UNSPEC': 0, 'AF_UNIX': 1, 'AF_INET': 2, 'AF_INET6': 10,
    'AF_NETLINK': 16, 'AF_PACKET': 17, 'AT_REMOVEDIR': 0x200, 'AT_EMPTY_PATH': 0x1000,
}

def flags(value):
    if isinstance(value, int): return value & 0xFFFFFFFF
    total = 0
    for token in value.split('|'):
        total |= int(token, 16) if token.startswith('0x') else FLAG_BITS.get(token, 0)
    return total

def string(text):
    if text is None: return struct.pack('<Bi', STR, 0)
    data = text.encode() + b'\0'
    return struct.pack('<Bi', STR, len(data)) + data

def sockaddr(addr):
    if addr is None: return struct.pack('<BH', SOCK, 0)
    family = addr.get('family')
    if family == 'AF_INET':
        ip = bytes(int(part) for part in addr['ip'].split('.'))
        return struct.pack('<BH', SOCK, 2) + struct.pack('>H', addr.get('port', 0)) + ip + bytes(8)
    if family == 'AF_INET6':
        import ipaddress
        ip = ipaddress.IPv6Address(addr['ip']).packed
        return struct.pack('<BH', SOCK, 10) + struct.pack('>H', addr.get('port', 0)) + bytes(4) + ip + bytes(4)
    if family == 'AF_UNIX':
        path = addr.get('path', '')
        raw = (b'\0' + path[1:].encode()) if path.startswith('@') else path.encode()
        return struct.pack('<BH', SOCK, 1) + raw.ljust(108, b'\0')[:108]
    return struct.pack('<BH', SOCK, FLAG_BITS.get(family, 0) if isinstance(family, str) else family or 0)

def argument(tag, value):
    if tag == INT: return struct.pack('<Bi', INT, int(value or 0))
    if tag == STR: return string(value)
    if tag == SOCK: return sockaddr(value)
    if tag == ARR:
        items = value or []
        return bytes([ARR])[:0] + b''.join(string(item)[0:] for item in items) + bytes([ARR])
    return struct.pack('<BI', tag, flags(value or 0))

def header(eid, argnum, ts=13888659479312, retval=0, comm=b'curl', pid=4242, ppid=1, uid=1000, pidns=0, mntns=0):
    return struct.pack('<QIIIIIIIIIq', ts, pidns, mntns, ppid, pid, ppid, pid, uid, eid, argnum, retval) + comm[:16].ljust(16, b'\0')

def record(eid, values, **fields):
    name, names, tags = EVENTS[eid]
    return header(eid, len(tags), **fields) + b''.join(argument(tag, value) for tag, value in zip(tags, values))

def from_capture(line):
    r = json.loads(line)
    eid, names, tags = BY_NAME[r['event']]
    args = r.get('args', {})
    return record(eid, [args.get(n) for n in names], ts=r.get('ktime_ns', 0), retval=r.get('retval', 0),
                  comm=r.get('comm', '').encode(), pid=r.get('host_pid', 0), ppid=r.get('host_ppid', 0),
                  uid=r.get('uid', 0), pidns=r.get('pid_ns', 0), mntns=r.get('mnt_ns', 0))

put = writer('wire_decoder')
for index, line in enumerate(capture[:90]):
    put(f'capture-{index:03}', from_capture(line))
synthetic = {
    'open': record(2, ['/etc/passwd', 'O_RDONLY|O_CLOEXEC']),
    'socket': record(41, ['AF_INET6', 'SOCK_DGRAM|SOCK_NONBLOCK', 17]),
    'connect-inet': record(42, [3, {'family': 'AF_INET', 'ip': '10.1.2.3', 'port': 443}], retval=-111),
    'connect-inet6': record(42, [3, {'family': 'AF_INET6', 'ip': 'fe80::1', 'port': 53}]),
    'connect-unix': record(42, [4, {'family': 'AF_UNIX', 'path': '/run/pipelined.sock'}]),
    'connect-abstract': record(42, [4, {'family': 'AF_UNIX', 'path': '@abstract'}]),
    'connect-unnamed': record(42, [4, {'family': 'AF_UNIX', 'path': ''}]),
    'connect-unspec': record(42, [4, None]),
    'connect-netlink': record(42, [4, {'family': 'AF_NETLINK'}]),
    'accept': record(43, [5, {'family': 'AF_INET', 'ip': '127.0.0.1', 'port': 8080}]),
    'bind': record(49, [6, {'family': 'AF_INET6', 'ip': '::', 'port': 9464}]),
    'listen': record(50, [6, 128]),
    'execve-null-path': record(59, [None, ['sh', '-c', 'true']]),
    'execve-empty-argv': record(59, ['/bin/true', []]),
    'execve-truncated-argv': record(59, ['/bin/echo', [str(i) for i in range(20)] + ['...']]),
    'rmdir': record(84, ['/tmp/d']),
    'unlink': record(87, ['/tmp/f']),
    'chown': record(92, ['/etc/shadow', 0, 42]),
    'ptrace': record(101, [16, 1234], retval=-1),
    'setuid': record(105, [0]),
    'setgid': record(106, [0]),
    'mount': record(165, ['/dev/sda1', '/mnt', 'ext4', 0x1001, 'errors=remount-ro']),
    'mount-null-data': record(165, ['none', '/proc', 'proc', 0, None]),
    'umount': record(166, ['/mnt', 2]),
    'openat': record(257, [-100, '/tmp/x', 'O_WRONLY|O_CREAT|O_TRUNC']),
    'fchownat': record(260, [-100, 'file', 0, 0, 0x100]),
    'unlinkat': record(263, [3, 'dir', 'AT_REMOVEDIR']),
    'execveat': record(322, [3, '', ['prog', '--flag'], 'AT_EMPTY_PATH']),
    'comm-full': record(3, [1], comm=b'0123456789abcdef'),
    'comm-not-utf8': record(3, [1], comm=b'\xff\xfe\xc3(abc'),
    'string-utf8': record(87, ['/tmp/caf\u00e9-\u2603-\U0001F600']),
    'string-not-utf8': header(87, 1) + struct.pack('<Bi', STR, 5) + b'\xff\xc0a\x80\0',
    'string-no-nul': header(87, 1) + struct.pack('<Bi', STR, 3) + b'abc',
    'string-inner-nul': header(87, 1) + struct.pack('<Bi', STR, 6) + b'ab\0cd\0',
    'padded': record(3, [7]) + bytes(5),
}
for name, data in synthetic.items():
    put(name, data)
base = synthetic['mount']
corrupt = {
    'empty': b'',
    'header-short': base[:67],
    'header-only': base[:68],
    'cut-in-tag': base[:68],
    'cut-in-length': base[:70],
    'cut-in-string': base[:80],
    'cut-in-argv': synthetic['execve-truncated-argv'][:150],
    'cut-in-sockaddr': synthetic['connect-unix'][:90],
    'unknown-event': header(7, 0),
    'event-id-huge': header(0xFFFFFFFF, 1) + struct.pack('<Bi', INT, 1),
    'argnum-too-many': header(3, 7) + struct.pack('<Bi', INT, 1),
    'argnum-wrong': header(3, 2) + struct.pack('<Bi', INT, 1) * 2,
    'tag-unknown': header(3, 1) + struct.pack('<Bi', 99, 1),
    'tag-mismatch': header(3, 1) + struct.pack('<Bi', STR, 1),
    'string-size-huge': header(87, 1) + struct.pack('<Bi', STR, 0x7FFFFFFF) + b'x\0',
    'string-size-negative': header(87, 1) + struct.pack('<Bi', STR, -5),
    'argv-22-elements': header(59, 2) + string('/bin/x') + bytes([ARR])[:0] + b''.join(string(str(i)) for i in range(22)) + bytes([ARR]),
    'argv-21-without-marker': header(59, 2) + string('/bin/x') + b''.join(string(str(i)) for i in range(21)) + bytes([ARR]),
    'argv-bad-element-tag': header(59, 2) + string('/bin/x') + struct.pack('<Bi', INT, 1) + bytes([ARR]),
    'argv-unterminated': header(59, 2) + string('/bin/x') + string('a'),
}
for name, data in corrupt.items():
    put(name, data)

# ---- NDJSON lines --------------------------------------------------------------
put = writer('ndjson_decoder')
for index, line in enumerate(capture):
    put(f'capture-{index:03}', line)
event = json.loads(capture[0])
def variant(**changes):
    r = dict(event); r.update(changes)
    return json.dumps(r, ensure_ascii=False, separators=(',', ':'))
lines = {
    'lost-kernel': '{"time":"2026-11-24T16:34:13.123456789Z","node":"vm","event":"lost","count":17,"where":"kernel","cpu":1}',
    'lost-sink-queue': '{"time":"2026-11-24T16:34:13Z","event":"lost","count":3,"where":"sink_queue","cpu":null,"stage":"archive"}',
    'lost-no-count': '{"time":"2026-11-24T16:34:13Z","event":"lost"}',
    'lost-bad-site': '{"time":"2026-11-24T16:34:13Z","event":"lost","count":1,"where":"Nowhere!"}',
    'minimal': '{"time":"2026-11-24T16:34:13Z","event":"close","args":{"fd":3}}',
    'event-id-only': '{"time":"2026-11-24T16:34:13Z","event_id":87,"args":{"path":"/x"}}',
    'event-id-conflict': '{"time":"2026-11-24T16:34:13Z","event":"close","event_id":87}',
    'args-first': '{"args":{"fd":9},"event":"close","time":"2026-11-24T16:34:13Z"}',
    'args-null': '{"time":"2026-11-24T16:34:13Z","event":"unlink","args":{"path":null}}',
    'time-offset': '{"time":"2026-11-24T18:34:13.5+02:00","event":"close","args":{"fd":1}}',
    'time-negative-offset': '{"time":"1970-01-01T00:00:00-23:59","event":"close"}',
    'time-far-future': '{"time":"9999-12-31T23:59:59.999999999Z","event":"close"}',
    'time-before-epoch': '{"time":"0001-01-01T00:00:00Z","event":"close"}',
    'time-bad': '{"time":"2026-13-40T25:61:61Z","event":"close"}',
    'time-missing': '{"event":"close","args":{"fd":1}}',
    'numbers-extreme': '{"time":"2026-11-24T16:34:13Z","event":"close","retval":-9223372036854775808,"ktime_ns":18446744073709551615,"pid":4294967295,"args":{"fd":-2147483648}}',
    'number-overflow': '{"time":"2026-11-24T16:34:13Z","event":"close","retval":9223372036854775808}',
    'number-fraction': '{"time":"2026-11-24T16:34:13Z","event":"close","pid":1.5e3}',
    'number-huge-digits': '{"time":"2026-11-24T16:34:13Z","event":"close","unknown":' + '9' * 400 + '}',
    'escapes': '{"time":"2026-11-24T16:34:13Z","event":"unlink","comm":"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t","args":{"path":"\\u00e9\\u2603\\ud83d\\ude00"}}',
    'escape-lone-surrogate': '{"time":"2026-11-24T16:34:13Z","event":"unlink","args":{"path":"\\ud800x"}}',
    'escape-bad': '{"time":"2026-11-24T16:34:13Z","event":"unlink","args":{"path":"\\x41"}}',
    'unicode-raw': variant(comm='caf\u00e9\u2603\U0001F600\U0001F600', args={'fd': 1}),
    'comm-long': variant(comm='a-very-long-command-name-indeed'),
    'comm-multibyte-cut': variant(comm='\u00e9' * 12),
    'sockaddr-inet': '{"time":"2026-11-24T16:34:13Z","event":"connect","args":{"fd":3,"addr":{"family":"AF_INET","ip":"192.168.0.1","port":80}}}',
    'sockaddr-inet6': '{"time":"2026-11-24T16:34:13Z","event":"connect","args":{"fd":3,"addr":{"family":"AF_INET6","ip":"::ffff:1.2.3.4","port":443}}}',
    'sockaddr-unix': '{"time":"2026-11-24T16:34:13Z","event":"connect","args":{"fd":3,"addr":{"family":"AF_UNIX","path":"@abstract"}}}',
    'sockaddr-other': '{"time":"2026-11-24T16:34:13Z","event":"connect","args":{"fd":3,"addr":{"family":"AF_NETLINK"}}}',
    'sockaddr-bad-ip': '{"time":"2026-11-24T16:34:13Z","event":"connect","args":{"fd":3,"addr":{"family":"AF_INET6","ip":"1::2::3","port":1}}}',
    'flags-numeric': '{"time":"2026-11-24T16:34:13Z","event":"openat","args":{"dirfd":-100,"path":"/x","flags":524354}}',
    'flags-unknown-bits': '{"time":"2026-11-24T16:34:13Z","event":"openat","args":{"dirfd":-100,"path":"/x","flags":"O_RDWR|0x80000000"}}',
    'flags-bad-symbol': '{"time":"2026-11-24T16:34:13Z","event":"openat","args":{"flags":"O_NOPE"}}',
    'argv-truncated': '{"time":"2026-11-24T16:34:13Z","event":"execve","args":{"path":"/bin/echo","argv":[' + ','.join('"%d"' % i for i in range(20)) + ',"..."]}}',
    'mount': '{"time":"2026-11-24T16:34:13Z","event":"mount","args":{"source":"/dev/sda1","target":"/mnt","fstype":"ext4","flags":"MS_RDONLY|MS_NOSUID","data":null}}',
    'nested-deep': '{"time":"2026-11-24T16:34:13Z","event":"close","x":' + '[' * 200 + ']' * 200 + '}',
    'trailing-garbage': '{"time":"2026-11-24T16:34:13Z","event":"close"} x',
    'trailing-cr': '{"time":"2026-11-24T16:34:13Z","event":"close"}\r',
    'not-an-object': '[1,2,3]',
    'unterminated': '{"time":"2026-11-24T16:34:13Z","event":"clo',
    'empty': '',
}
for name, data in lines.items():
    put(name, data)

# ---- pipeline files ------------------------------------------------------------
put = writer('pipeline_loader')
for path in sorted(glob.glob(os.path.join(root, 'pipelines', '*.yaml'))):
    put('shipped-' + os.path.basename(path), open(path, 'rb').read())
for path in sorted(glob.glob(os.path.join(root, 'Tests', 'CLITests', 'Corpus', '*.yaml'))):
    put('bad-' + os.path.basename(path), open(path, 'rb').read())
# Every YAML example of the pipeline file reference.
doc = open(os.path.join(root, 'docs', 'pipeline-file.md')).read().split('```')
for index, block in enumerate(doc[1::2]):
    if block.startswith('yaml\n'):
        put(f'doc-{index:02}.yaml', block[5:])
files = {
    'empty.yaml': '',
    'comment-only.yaml': '# nothing\n',
    'scalar.yaml': 'hello\n',
    'list.yaml': '- a\n- b\n',
    'tabs.yaml': 'sources:\n\tkernel:\n\t\ttype: syscall_monitor\n',
    'crlf.yaml': 'sources:\r\n  k:\r\n    type: syscall_monitor\r\nsinks:\r\n  o:\r\n    type: file\r\n    inputs: [k]\r\n    path: /dev/null\r\n',
    'alias.yaml': 'sources:\n  k: &a\n    type: syscall_monitor\nsinks:\n  o:\n    <<: *a\n    type: file\n    inputs: [k]\n',
    'duplicate-keys.yaml': 'sources:\n  k:\n    type: syscall_monitor\n  k:\n    type: replay\n',
    'env.yaml': 'sources:\n  r:\n    type: replay\n    path: ${HOME}/x.jsonl\nsinks:\n  o:\n    type: file\n    inputs: [r]\n    path: ${MISSING:-/tmp/out}\n    rotate: ${EMPTY:-10MiB}\n',
    'env-bad.yaml': 'sources:\n  r:\n    type: replay\n    path: ${UNCLOSED\n',
    'cycle.yaml': 'sources:\n  k:\n    type: syscall_monitor\nfilters:\n  a:\n    type: retval\n    inputs: [b]\n  b:\n    type: retval\n    inputs: [a]\nsinks:\n  o:\n    type: file\n    inputs: [a]\n    path: /dev/null\n',
    'unicode.yaml': 'name: "caf\u00e9 \u2603"\nsources:\n  k\u00e9:\n    type: syscall_monitor\n',
    'nel-ls-ps.yaml': 'sources:\u0085  k:\u2028    type: x\u2029',
    'flow.yaml': '{sources: {k: {type: syscall_monitor}}, sinks: {o: {type: unix_socket, inputs: [k], path: /run/x.sock, allow_uids: [0, 1000]}}}',
    'deep.yaml': 'sources: ' + '[' * 100 + ']' * 100 + '\n',
    'sizes.yaml': 'settings:\n  batch_events: 99999999999999999999\n  drain_timeout: 1e9s\nsources:\n  k:\n    type: syscall_monitor\n    events: [open, nope]\nsinks:\n  a:\n    type: lz4_segments\n    inputs: [k]\n    directory: /tmp/a\n    segment_bytes: -1KiB\n    queue_events: 0\n',
    'bad-utf8.yaml': b'sources:\n  \xff\xfe: {type: x}\n',
}
for name, data in files.items():
    put(name, data)

# ---- segments ------------------------------------------------------------------
put = writer('segment_reader')
sealed = {os.path.basename(p): open(p, 'rb').read() for p in sorted(glob.glob(os.path.join(here, 'segment-*.jsonl.lz4')))}
for name, data in sealed.items():
    put('sealed-' + name, data)
text = ('\n'.join(capture[:40]) + '\n').encode()
def lz4(data, *options):
    return subprocess.run(['lz4', '-c', '-q', *options], input=data, capture_output=True, check=True).stdout
frames = {
    'lz4-block-checksums': lz4(text, '-B4', '-BX'),
    'lz4-content-size': lz4(text, '-B4', '--content-size'),
    'lz4-no-content-checksum': lz4(text, '-B4', '--no-frame-crc'),
    'lz4-linked-blocks': lz4(text * 3, '-B4', '-BD', '-BX'),
    'lz4-uncompressible': lz4(bytes(range(32, 127)) * 10 + b'\n', '-B4', '-BX'),
    'lz4-empty': lz4(b'', '-B4'),
    'lz4-no-newline': lz4(b'{"time":"2026-11-24T16:34:13Z","event":"close"}', '-B4', '-BX'),
    'lz4-binary-content': lz4(bytes(range(256)) * 4, '-B4', '-BX'),
}
for name, data in frames.items():
    put(name, data)
small = sealed['segment-12.jsonl.lz4']
multi = sealed['segment-600.jsonl.lz4']
def flip(data, offset, mask=0x01):
    data = bytearray(data); data[offset] ^= mask; return bytes(data)
damaged = {
    'empty': b'',
    'magic-only': small[:4],
    'magic-partial': small[:3],
    'bad-magic': b'\x04\x22\x4d\x19' + small[4:],
    'header-cut': small[:6],
    'header-checksum-bad': flip(small, 6),
    'block-size-id-bad': flip(small, 5, 0x70),
    'cut-in-first-block': small[:len(small) // 2],
    'cut-before-end-mark': small[:-8],
    'cut-in-end-mark': small[:-6],
    'cut-in-content-checksum': small[:-2],
    'flipped-byte-in-block': flip(small, 40),
    'flipped-content-checksum': flip(small, len(small) - 1),
    'uncompressed-bit-set': flip(small, 10, 0x80),
    'block-size-huge': small[:7] + b'\xff\xff\x7f\x00' + small[11:],
    'bytes-after-frame': small + b'\n',
    'two-frames': small + small,
    'multi-cut-second-block': multi[:len(multi) * 2 // 3],
    'multi-flipped-last-block': flip(multi, len(multi) - 40),
}
for name, data in damaged.items():
    put(name, data)

# ---- manifests -----------------------------------------------------------------
put = writer('manifest_reader')
real = open(os.path.join(here, 'manifest.jsonl'), 'rb').read()
good = b'{"segment":"archive-20261124T163413Z-000001.jsonl.lz4","first_time":"2026-11-24T16:34:13.123456789Z","last_time":"2026-11-24T16:44:13.5Z","events":1200,"bytes":65536}\n'
manifests = {
    'real': real,
    'one-entry': good,
    'truncated-last-line': real + good[:50],
    'garbage': b'\x00\xffnot json at all\n{]\n',
    'empty': b'',
    'blank-lines': b'\n\n' + good + b'\n',
    'crlf': good.replace(b'\n', b'\r\n'),
    'open-segment': good.replace(b'.jsonl.lz4"', b'.jsonl.lz4.open"'),
    'bad-name': good.replace(b'archive-20261124T163413Z-000001', b'../../etc/passwd'),
    'bad-time': good.replace(b'2026-11-24T16:34:13.123456789Z', b'2026-02-30T25:00:00Z'),
    'time-extremes': good.replace(b'2026-11-24T16:34:13.123456789Z', b'0000-01-01T00:00:00Z').replace(b'2026-11-24T16:44:13.5Z', b'9999-12-31T23:59:59.999999999Z'),
    'negative-count': good.replace(b'1200', b'-1'),
    'huge-count': good.replace(b'1200', b'99999999999999999999'),
    'missing-field': b'{"segment":"archive-20261124T163413Z-000001.jsonl.lz4","events":1}\n',
    'escapes': b'{"segment":"archive\\u002d20261124T163413Z-000001.jsonl.lz4","first_time":"2026-11-24T16:34:13Z","last_time":"2026-11-24T16:34:13Z","events":0,"bytes":0,"note":"\\ud800\\n\\t"}\n',
    'unknown-fields': good.replace(b'}\n', b',"x":"y","z":1}\n'),
    'whitespace': b' { "segment" : "archive-20261124T163413Z-000001.jsonl.lz4" , "first_time":"2026-11-24T16:34:13Z","last_time":"2026-11-24T16:34:13Z","events":0,"bytes":0 } \n',
    'nested': good.replace(b'1200', b'{"a":1}'),
    'many': good * 40,
}
for name, data in manifests.items():
    put(name, data)

for harness in sorted(os.listdir(corpus)):
    print(harness, len(os.listdir(os.path.join(corpus, harness))))
