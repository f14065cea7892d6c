//! Process-wide settings of the command-line tool.

/// Restores the default action of `SIGPIPE`, ending the process, which the Rust runtime sets to
/// "ignore" at start. A command whose output goes to a pipe that closes early (`edgellm inspect M
/// | head`) then ends quietly, as Unix tools do, instead of failing on its next write. Not for a
/// server: there a write to a client that went away must be an error its request handles.
pub fn end_on_broken_pipe() {
    // SAFETY: `signal` with `SIG_DFL` installs no handler and has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}
