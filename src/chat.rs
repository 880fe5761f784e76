//! `roomcast chat`, the terminal side (part of the binary, not of the library).
//!
//! On a terminal, chat edits the input line itself: the terminal's own echo and line editing are
//! off while it runs and restored however it ends. An event that arrives while the user types is
//! printed above the input line, which is then drawn again as it was; a line the user sends
//! leaves the input and comes back once, as the room delivers it, in order with everyone else's.
//! Keys: printable text, Backspace, Ctrl-U (clear), Enter (send), Ctrl-D on an empty line or
//! `/quit` (leave), Ctrl-C (leave). With input from a pipe or a file, each line is sent as read
//! and every event is printed.
//!
//! The chat ends when the user leaves (exit status 0), or when the relay ends the membership
//! (kick, ban, room destroyed) or the connection (exit status 1, with the reason). It does not
//! reconnect.

use crate::cli::{Target, connect};
use crate::{ChatArgs, shutdown_signal};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use roomcast::client::ClientEvent;
use roomcast::protocol::{Message, utc_text};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Lines the user entered; `None` at the end of the input.
type Lines = tokio::sync::mpsc::Receiver<std::io::Result<String>>;

/// Lines read ahead of the sends before the reader waits (the channel is its bound).
const LINES_AHEAD: usize = 16;

pub(crate) async fn chat(a: ChatArgs) -> Result<()> {
    // Listening for Ctrl-C and SIGTERM before the terminal changes mode: a signal then ends the
    // chat through the code below, which puts the terminal back.
    let stop = shutdown_signal()?;
    let target = Target::new(&a.conn);
    let client = Arc::new(connect(&a.conn, &target, &a.user).await?);
    let info = match client.join(&a.room, 10).await {
        Ok(info) => info,
        Err(e) => {
            client.close().await;
            return Err(target.explain(&a.conn, e));
        }
    };
    let me = client.user().to_owned();
    println!(
        "joined {} as {me} ({} members). Type a message and press Enter; /quit, Ctrl-D or Ctrl-C leaves the room.",
        info.room.id, info.room.member_count
    );
    for h in &info.history {
        if h.recalled {
            println!("{} (a recalled message)", h.message.from);
        } else {
            println!("{}", chat_message(&h.message));
        }
    }
    let terminal = term::Terminal::take();
    let screen = Arc::new(Screen {
        state: Mutex::new(Input {
            prompt: format!("{me}> "),
            text: String::new(),
            width: terminal.as_ref().map(|t| t.width),
        }),
    });
    screen.redraw();
    let mut lines = match &terminal {
        Some(_) => term::edit_lines(screen.clone()),
        None => piped_lines(),
    };
    let mut printer = {
        let (client, screen, room, me) =
            (client.clone(), screen.clone(), a.room.clone(), me.clone());
        tokio::spawn(async move {
            while let Some(ev) = client.next_event().await {
                match chat_event(&ev, &me, &room) {
                    ChatLine::Show(line) => screen.line(&line),
                    ChatLine::Skip => {}
                    ChatLine::End(why) => return why,
                }
            }
            "the connection closed".to_owned()
        })
    };
    tokio::pin!(stop);
    let ended = loop {
        tokio::select! {
            why = &mut printer => break Ok(Some(why.unwrap_or_else(|e| e.to_string()))),
            () = &mut stop => break Ok(None),
            line = lines.recv() => match next_line(line) {
                Err(e) => break Err(e),
                Ok(None) => break Ok(None),
                Ok(Some(line)) if line == "/quit" => break Ok(None),
                Ok(Some(line)) if line.is_empty() => {}
                Ok(Some(line)) => {
                    let body = Bytes::from(line.clone());
                    if let Err(e) = client.send(&a.room, "chat", body, false).await {
                        screen.line(&format!("* not sent ({e}): {line}"));
                    }
                }
            },
        }
    };
    screen.end();
    drop(terminal);
    printer.abort();
    match ended {
        Err(e) => {
            client.close().await;
            Err(e)
        }
        // The relay ended the membership or the connection: nothing to leave.
        Ok(Some(why)) => {
            client.close().await;
            bail!("{why}")
        }
        Ok(None) => {
            let left = client.leave(&a.room).await;
            client.close().await;
            left.map_err(|e| target.explain(&a.conn, e))
        }
    }
}

fn next_line(line: Option<std::io::Result<String>>) -> Result<Option<String>> {
    match line {
        None => Ok(None),
        Some(line) => Ok(Some(
            line.context("reading standard input")?
                .trim_end()
                .to_owned(),
        )),
    }
}

/// Lines of standard input that is not a terminal, read on a thread of their own: a read
/// blocked there must not keep the runtime from shutting down when the chat ends otherwise.
fn piped_lines() -> Lines {
    use std::io::BufRead;
    let (tx, rx) = tokio::sync::mpsc::channel(LINES_AHEAD);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// What the input line holds, and how wide the terminal is (`None`: not a terminal, no input
/// line is drawn).
struct Input {
    prompt: String,
    text: String,
    width: Option<usize>,
}

impl Input {
    /// The prompt and the end of the text that fits on one row (so a redraw clears it all).
    fn row(&self, width: usize) -> String {
        let room = width.saturating_sub(self.prompt.chars().count() + 1).max(1);
        let count = self.text.chars().count();
        if count <= room {
            return format!("{}{}", self.prompt, self.text);
        }
        let tail: String = self.text.chars().skip(count - room + 1).collect();
        format!("{}…{tail}", self.prompt)
    }
}

/// The output of `chat`: event lines, and on a terminal the input line below them.
struct Screen {
    state: Mutex<Input>,
}

impl Screen {
    fn input(&self) -> std::sync::MutexGuard<'_, Input> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prints `line` above the input line.
    fn line(&self, line: &str) {
        let input = self.input();
        let mut out = std::io::stdout().lock();
        let _ = match input.width {
            Some(width) => write!(out, "\r\x1b[2K{line}\n{}", input.row(width)),
            None => writeln!(out, "{line}"),
        };
        let _ = out.flush();
    }

    /// Draws the input line again.
    fn redraw(&self) {
        let input = self.input();
        if let Some(width) = input.width {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K{}", input.row(width));
            let _ = out.flush();
        }
    }

    /// Clears the input line before the program ends.
    fn end(&self) {
        if self.input().width.is_some() {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
        }
    }
}

#[cfg(unix)]
mod term {
    use super::{LINES_AHEAD, Lines, Screen};
    use rustix::termios::{self, LocalModes, OptionalActions, SpecialCodeIndex, Termios};
    use std::io::Read;
    use std::sync::Arc;

    /// The terminal in character mode without echo; dropping it restores the mode it had.
    pub(super) struct Terminal {
        saved: Termios,
        pub(super) width: usize,
    }

    impl Terminal {
        /// Takes the terminal when both standard input and output are one.
        pub(super) fn take() -> Option<Terminal> {
            let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
            if !termios::isatty(&stdin) || !termios::isatty(&stdout) {
                return None;
            }
            let saved = termios::tcgetattr(&stdin).ok()?;
            let mut mode = saved.clone();
            mode.local_modes
                .remove(LocalModes::ICANON | LocalModes::ECHO);
            mode.special_codes[SpecialCodeIndex::VMIN] = 1;
            mode.special_codes[SpecialCodeIndex::VTIME] = 0;
            termios::tcsetattr(&stdin, OptionalActions::Now, &mode).ok()?;
            let width = termios::tcgetwinsize(&stdout)
                .map(|w| usize::from(w.ws_col))
                .unwrap_or(0);
            Some(Terminal {
                saved,
                width: if width == 0 { 80 } else { width },
            })
        }
    }

    impl Drop for Terminal {
        fn drop(&mut self) {
            let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
        }
    }

    /// Where a key press leaves the line editor.
    #[derive(Debug, PartialEq)]
    pub(super) enum Key {
        /// The line changed (or not): draw it.
        Edit,
        /// Enter: this line is done.
        Line(String),
        /// Ctrl-D on an empty line: the end of the input.
        End,
    }

    /// The line editor's state between bytes: UTF-8 in progress and escape sequences skipped.
    #[derive(Default)]
    pub(super) struct Editor {
        partial: Vec<u8>,
        escape: Escape,
    }

    #[derive(Default, PartialEq)]
    enum Escape {
        #[default]
        None,
        Started,
        /// In a CSI or SS3 sequence (arrow keys and the like), until its final byte.
        Sequence,
    }

    impl Editor {
        /// Applies one input byte to `text`.
        pub(super) fn key(&mut self, byte: u8, text: &mut String) -> Key {
            match self.escape {
                Escape::Started => {
                    self.escape = if byte == b'[' || byte == b'O' {
                        Escape::Sequence
                    } else {
                        Escape::None
                    };
                    return Key::Edit;
                }
                Escape::Sequence => {
                    if (0x40..=0x7e).contains(&byte) {
                        self.escape = Escape::None;
                    }
                    return Key::Edit;
                }
                Escape::None => {}
            }
            match byte {
                b'\r' | b'\n' => Key::Line(std::mem::take(text)),
                0x7f | 0x08 => {
                    text.pop();
                    Key::Edit
                }
                0x15 => {
                    text.clear();
                    Key::Edit
                }
                0x04 if text.is_empty() => Key::End,
                0x1b => {
                    self.escape = Escape::Started;
                    Key::Edit
                }
                b if b < 0x20 => Key::Edit,
                b => {
                    self.partial.push(b);
                    match std::str::from_utf8(&self.partial) {
                        Ok(s) => {
                            text.push_str(s);
                            self.partial.clear();
                        }
                        // An incomplete character waits for its next byte; a broken one goes.
                        Err(e) if e.error_len().is_some() => self.partial.clear(),
                        Err(_) => {}
                    }
                    Key::Edit
                }
            }
        }
    }

    /// Reads keys on a thread of their own, edits the screen's input line, and yields the
    /// lines entered.
    pub(super) fn edit_lines(screen: Arc<Screen>) -> Lines {
        let (tx, rx) = tokio::sync::mpsc::channel(LINES_AHEAD);
        std::thread::spawn(move || {
            let mut editor = Editor::default();
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                for &byte in &buf[..n] {
                    let key = editor.key(byte, &mut screen.input().text);
                    screen.redraw();
                    match key {
                        Key::Edit => {}
                        Key::Line(line) => {
                            if tx.blocking_send(Ok(line)).is_err() {
                                return;
                            }
                        }
                        Key::End => return,
                    }
                }
            }
        });
        rx
    }

    #[cfg(test)]
    mod tests {
        use super::{Editor, Key};

        fn feed(bytes: &[u8]) -> (Vec<Key>, String) {
            let mut editor = Editor::default();
            let mut text = String::new();
            let keys = bytes.iter().map(|&b| editor.key(b, &mut text)).collect();
            (keys, text)
        }

        #[test]
        fn the_editor_takes_text_backspace_clear_and_enter() {
            let (keys, text) = feed(b"helo\x7flo\r");
            assert_eq!(keys.last(), Some(&Key::Line("hello".into())));
            assert_eq!(text, "");
            let (_, text) = feed(b"abc\x15x");
            assert_eq!(text, "x");
        }

        #[test]
        fn the_editor_skips_arrow_keys_and_keeps_utf8_whole() {
            let (_, text) = feed("a\x1b[Db\x1bOAc é€".as_bytes());
            assert_eq!(text, "abc é€");
            let (keys, text) = feed(&[b'x', 0xff, b'y']);
            assert_eq!(text, "xy");
            assert!(keys.iter().all(|k| *k == Key::Edit));
        }

        #[test]
        fn ctrl_d_ends_only_an_empty_line() {
            let (keys, text) = feed(b"ab\x04");
            assert_eq!((keys.last(), text.as_str()), (Some(&Key::Edit), "ab"));
            let (keys, _) = feed(b"\x04");
            assert_eq!(keys, vec![Key::End]);
        }
    }
}

#[cfg(not(unix))]
mod term {
    use super::{Lines, Screen};
    use std::sync::Arc;

    /// No line editor off Unix: input is read as from a pipe.
    pub(super) struct Terminal {
        pub(super) width: usize,
    }

    impl Terminal {
        pub(super) fn take() -> Option<Terminal> {
            None
        }
    }

    pub(super) fn edit_lines(_screen: Arc<Screen>) -> Lines {
        super::piped_lines()
    }
}

/// What `chat` does with an event.
enum ChatLine {
    Show(String),
    Skip,
    /// The chat is over: the membership or the connection ended, for this reason.
    End(String),
}

fn chat_message(m: &Message) -> String {
    let from = if m.from.is_empty() { "system" } else { &m.from };
    let kind = if m.msg_type == "chat" {
        String::new()
    } else {
        format!(" [{}]", m.msg_type)
    };
    match std::str::from_utf8(&m.body) {
        Ok(text) => format!("{from}{kind}: {text}"),
        Err(_) => format!("{from}{kind}: ({} bytes of binary data)", m.body.len()),
    }
}

fn who(users: &[String], me: &str) -> String {
    let names: Vec<&str> = users
        .iter()
        .map(|u| if u == me { "you" } else { u.as_str() })
        .collect();
    names.join(", ")
}

fn where_(room: &str) -> String {
    if room.is_empty() {
        "in every room".into()
    } else {
        format!("in {room}")
    }
}

/// An event as a line for people.
fn chat_event(ev: &ClientEvent, me: &str, room: &str) -> ChatLine {
    use ChatLine::{End, Show, Skip};
    use roomcast::protocol::{DestroyReason, Event, KickReason};
    match ev {
        ClientEvent::Message { message, .. } => Show(chat_message(message)),
        ClientEvent::Gap { low, normal, .. } => {
            let mut parts = Vec::new();
            if *normal > 0 {
                parts.push(format!("{normal} messages"));
            }
            if *low > 0 {
                parts.push(format!("{low} low-priority messages"));
            }
            Show(format!(
                "* missed {} (this connection fell behind)",
                parts.join(" and ")
            ))
        }
        ClientEvent::RoomDestroyed { room: r, reason } if r == room => End(format!(
            "room {r} was destroyed {}",
            match reason {
                DestroyReason::Manual => "by the operator",
                DestroyReason::Idle => "after a time without activity",
                DestroyReason::Lifetime => "at the end of its lifetime",
                DestroyReason::Scheduled => "at its scheduled time",
            }
        )),
        ClientEvent::Kicked { room: r, reason } if r == room => End(match reason {
            KickReason::Banned => format!("you were banned from {r}"),
            KickReason::OtherDevice => format!("you left {r} on another device"),
            KickReason::SingleRoom => format!("you joined another room, so you left {r}"),
            KickReason::Offline => format!("you were removed from {r} after being offline"),
        }),
        ClientEvent::RoomDestroyed { .. } | ClientEvent::Kicked { .. } => Skip,
        ClientEvent::Resumed { missed: 0, .. } => Show("* back in the room: nothing missed".into()),
        ClientEvent::Resumed { missed, .. } => Show(format!(
            "* back in the room: {missed} messages went out while you were away"
        )),
        ClientEvent::Reconnected { server } => Show(format!("* reconnected, to {server}")),
        ClientEvent::ResumeFailed { room: r, error } if r == room => {
            End(format!("could not rejoin {r} after reconnecting: {error}"))
        }
        ClientEvent::ResumeFailed { .. } => Skip,
        ClientEvent::Closed { reason, .. } => End(format!("connection closed: {reason}")),
        ClientEvent::Notice(event) => Show(match event {
            Event::Muted {
                room,
                users,
                until_ms,
            } => format!(
                "* {} muted {} until {}",
                who(users, me),
                where_(room),
                utc_text(*until_ms)
            ),
            Event::Unmuted { room, users } => {
                format!("* {} unmuted {}", who(users, me), where_(room))
            }
            Event::MuteAll { .. } => "* the room is muted: only whitelisted users may write".into(),
            Event::MuteAllLifted { .. } => "* the room is no longer muted".into(),
            Event::Banned {
                users, until_ms, ..
            } => format!("* {} banned until {}", who(users, me), utc_text(*until_ms)),
            Event::Unbanned { users, .. } => format!("* {} unbanned", who(users, me)),
            Event::MemberJoined { user, .. } => format!("* {user} joined"),
            Event::MemberLeft { user, .. } => format!("* {user} left"),
            Event::MemberCount { count, .. } => format!("* {count} members"),
            Event::Recalled { seq, .. } => format!("* message #{seq} was recalled"),
            Event::AttributeChanged { attribute, .. } => format!(
                "* {} set {} = {}",
                attribute.owner, attribute.key, attribute.value
            ),
            Event::AttributeRemoved { key, auto, .. } => {
                if *auto {
                    format!("* {key} removed (its owner left)")
                } else {
                    format!("* {key} removed")
                }
            }
            Event::Ready { .. }
            | Event::Message(_)
            | Event::Gap { .. }
            | Event::RoomDestroyed { .. }
            | Event::Kicked { .. }
            | Event::Resumed { .. } => return Skip,
        }),
    }
}
