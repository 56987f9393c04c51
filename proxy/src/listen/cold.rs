//! Futures kept out of their caller's stack frame: the TLS-only branches of a plain
//! connection's task (handshake, idle wait, writes, shutdown), and the rare branches of the
//! request path (local answers, refusals, error answers, uploads; see `listen::conn`,
//! `request::api`, `request::forward`, `request::deliver`).
//!
//! A boxed future keeps its state off the caller's future, but its `poll` is still inlined
//! into the caller's, and so are its temporaries: the TLS handshake's alone made the
//! connection task's poll frame some 12 KiB (rustls' session set-up, moved a kilobyte at a
//! time), and every request of every plain connection ran on top of it, its stack probes and
//! scattered locals touching a dozen cache lines that nothing else did. Here the future is
//! made and polled by functions of their own, so their frames exist only while such a
//! branch runs; the one allocation is paid only there.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The future `make` returns, made in its own heap block by a function of its own (so the
/// caller's frame holds no room to build it in) and polled by [`OutOfLine`]'s own `poll`.
#[inline(never)]
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> OutOfLine<F> {
    OutOfLine(Box::pin(make()))
}

/// A boxed future whose `poll` is never inlined into its caller's (see the module docs).
pub struct OutOfLine<F>(Pin<Box<F>>);

impl<F: Future> Future for OutOfLine<F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.get_mut().0.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::boxed;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    #[test]
    fn an_out_of_line_future_is_one_pointer_and_gives_its_output() {
        let big = [7u8; 4096];
        let mut yielded = false;
        let fut = boxed(|| async move {
            // Pending once, then ready: the state survives between polls.
            std::future::poll_fn(|_| {
                if std::mem::replace(&mut yielded, true) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            big.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        assert_eq!(std::mem::size_of_val(&fut), std::mem::size_of::<usize>());
        let mut fut = pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(7 * 4096));
    }
}
