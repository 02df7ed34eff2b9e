//! Containers' logs in the CRI format the kubelet keeps (`<RFC 3339 time> <stdout|stderr> <F|P>
//! <text>`, one record per line, `P` for the part of a line longer than a record), written as a
//! container's output arrives and read back as `kubectl logs` asks: `--tail`, `--since`,
//! `--timestamps`, `--limit-bytes`, `-f`.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

/// Longest record; a longer line is split into partial records, as containerd does.
const MAX_RECORD: usize = 16 * 1024;
/// A log grows to this size, then starts over (the older part kept as `<file>.1`), as the
/// kubelet's `containerLogMaxSize` does.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `2026-12-07T04:14:45.123456789Z`.
pub fn timestamp_nanos(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond()
    )
}

/// One record as written.
pub fn record(at: time::OffsetDateTime, stream: Stream, partial: bool, text: &[u8]) -> Vec<u8> {
    let mut line = format!(
        "{} {} {} ",
        timestamp_nanos(at),
        stream.as_str(),
        if partial { "P" } else { "F" }
    )
    .into_bytes();
    line.extend_from_slice(text);
    line.push(b'\n');
    line
}

/// Copies a container's `stream` into the log at `path` until the stream ends (the container
/// exited). Both streams of a container append to the same file.
pub async fn pump(source: impl AsyncRead + Unpin, stream: Stream, path: PathBuf) {
    let mut reader = BufReader::with_capacity(MAX_RECORD, source);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let read = {
            let mut limited = (&mut reader).take(MAX_RECORD as u64);
            limited.read_until(b'\n', &mut line).await
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        }
        let bytes = record(time::OffsetDateTime::now_utc(), stream, !complete, &line);
        if let Err(error) = append(&path, &bytes).await {
            tracing::warn!(path = %path.display(), %error, "cannot write a container's log");
        }
    }
}

async fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if tokio::fs::metadata(path)
        .await
        .is_ok_and(|metadata| metadata.len() + bytes.len() as u64 > MAX_LOG_BYTES)
    {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        tokio::fs::rename(path, PathBuf::from(rotated)).await?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    file.write_all(bytes).await?;
    // tokio's `write_all` returns once the bytes are handed to a blocking thread; without the
    // flush the next record's handle could land first, and a reader could miss the last record.
    file.flush().await
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub seconds: i64,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a [u8],
}

/// Parses one line of a log file (without its newline); `None` for a damaged one.
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |byte| *byte == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    let seconds = time
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()?
        .as_second();
    Some(Record {
        time,
        seconds,
        stream,
        partial: tag == b"P",
        text,
    })
}

/// What `kubectl logs` asked for.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub tail_lines: Option<usize>,
    /// Only records at or after this time (seconds).
    pub since: Option<i64>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
}

/// The text a client gets for `content` (a whole log file) under `options`.
pub fn render(content: &[u8], options: &LogOptions) -> Vec<u8> {
    let records: Vec<Record<'_>> = content
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(parse)
        .filter(|record| options.since.is_none_or(|since| record.seconds >= since))
        .collect();
    // `--tail` counts whole lines: a partial record belongs to the line its final record ends.
    let start = match options.tail_lines {
        None => 0,
        Some(wanted) => {
            let mut whole = 0;
            let mut start = records.len();
            for (index, record) in records.iter().enumerate().rev() {
                if !record.partial {
                    if whole == wanted {
                        break;
                    }
                    whole += 1;
                }
                start = index;
            }
            start
        }
    };
    let mut out = Vec::new();
    let mut line_start = true;
    for record in &records[start..] {
        if options.timestamps && line_start {
            out.extend_from_slice(record.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(record.text);
        if !record.partial {
            out.push(b'\n');
        }
        line_start = !record.partial;
    }
    if let Some(limit) = options.limit_bytes {
        out.truncate(limit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(second).unwrap()
    }

    fn log() -> Vec<u8> {
        let mut content = Vec::new();
        content.extend(record(at(100), Stream::Stdout, false, b"one"));
        content.extend(record(at(200), Stream::Stderr, false, b"two"));
        content.extend(record(at(300), Stream::Stdout, true, b"thr"));
        content.extend(record(at(300), Stream::Stdout, false, b"ee"));
        content
    }

    #[test]
    fn records_round_trip() {
        let line = record(at(1_795_000_000), Stream::Stderr, true, b"a b c");
        let parsed = parse(line.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(parsed.time, "2026-11-18T11:06:40.000000000Z");
        assert_eq!(parsed.seconds, 1_795_000_000);
        assert_eq!(parsed.stream, "stderr");
        assert!(parsed.partial);
        assert_eq!(parsed.text, b"a b c");
        assert!(parse(b"not a record").is_none());
    }

    #[test]
    fn kubectl_logs_options_select_and_shape_the_text() {
        let content = log();
        let all = render(&content, &LogOptions::default());
        assert_eq!(all, b"one\ntwo\nthree\n");
        let tail = LogOptions {
            tail_lines: Some(1),
            ..LogOptions::default()
        };
        assert_eq!(render(&content, &tail), b"three\n");
        let tail = LogOptions {
            tail_lines: Some(2),
            ..LogOptions::default()
        };
        assert_eq!(render(&content, &tail), b"two\nthree\n");
        let since = LogOptions {
            since: Some(150),
            ..LogOptions::default()
        };
        assert_eq!(render(&content, &since), b"two\nthree\n");
        let stamped = LogOptions {
            timestamps: true,
            tail_lines: Some(1),
            ..LogOptions::default()
        };
        assert_eq!(
            String::from_utf8(render(&content, &stamped)).unwrap(),
            "1970-01-01T00:05:00.000000000Z three\n"
        );
        let limited = LogOptions {
            limit_bytes: Some(5),
            ..LogOptions::default()
        };
        assert_eq!(render(&content, &limited), b"one\nt");
        let none = LogOptions {
            tail_lines: Some(0),
            ..LogOptions::default()
        };
        assert!(render(&content, &none).is_empty());
    }

    #[tokio::test]
    async fn a_pump_writes_whole_and_partial_lines() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("0.log");
        let long = "x".repeat(MAX_RECORD + 10);
        let input = format!("hello\n{long}\nlast without newline");
        pump(input.as_bytes(), Stream::Stdout, path.clone()).await;
        let content = std::fs::read(&path).unwrap();
        let text = render(&content, &LogOptions::default());
        assert_eq!(
            String::from_utf8(text).unwrap(),
            format!("hello\n{long}\nlast without newline")
        );
        let partial = content
            .split(|byte| *byte == b'\n')
            .filter_map(parse)
            .filter(|record| record.partial)
            .count();
        assert_eq!(
            partial, 2,
            "the long line's first part and the unterminated last line"
        );
    }
}
