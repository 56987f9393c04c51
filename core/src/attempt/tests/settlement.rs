//! The settlement property: whatever happens, nothing stays reserved or in flight.

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Step {
    Head(u8, u16),
    Body(u8, bool),
    Fail(u8),
    Refuse(u8),
    Timer(u16),
    ClientGone,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (
            0u8..6,
            prop::sample::select(vec![200u16, 400, 429, 500, 503])
        )
            .prop_map(|(a, s)| Step::Head(a, s)),
        (0u8..6, any::<bool>()).prop_map(|(a, c)| Step::Body(a, c)),
        (0u8..6).prop_map(Step::Fail),
        (0u8..6).prop_map(Step::Refuse),
        (0u16..2000).prop_map(Step::Timer),
        Just(Step::ClientGone),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn every_reservation_is_settled_once(steps in prop::collection::vec(step(), 1..40), relay in 0u8..3) {
        let text = format!(
            "{}[[models]]\nname = \"m\"\nretry = {{ max_attempts = 3, base_backoff_ms = 50, max_backoff_ms = 200 }}\nhedge = {{ delay_ms = 20, max_percent = 100 }}\nfallbacks = [\"f\"]\ncontext_window_fallback = \"f\"\ndeployments = [{{ provider = \"p\", model = \"a\" }}, {{ provider = \"p\", model = \"b\" }}]\n[[models]]\nname = \"f\"\ndeployments = [{{ provider = \"p\", model = \"c\" }}]\n",
            provider()
        );
        let mut h = Harness::new(&text);
        let mut lp = h.start(0, Duration::from_secs(5));
        let mut out = h.poll(&mut lp);
        let mut t = 0u64;
        let terminal = |c: &Command| !matches!(c, Command::Wait { .. } | Command::Send { .. } | Command::ReadErrorBody { .. } | Command::Cancel { .. });
        for s in steps {
            if out.iter().any(terminal) {
                break;
            }
            let e = match s {
                Step::Head(a, st) => head(a as usize, st),
                Step::Body(a, c) => Event::ErrorBody { attempt: AttemptId(a as usize), context_window: c },
                Step::Fail(a) => connect_failed(a as usize),
                Step::Refuse(a) => Event::Refused { attempt: AttemptId(a as usize), error: GatewayError::new(ErrorKind::InvalidRequest, "no") },
                Step::Timer(ms) => { t += u64::from(ms); h.at(t); Event::Timer }
                Step::ClientGone => Event::ClientGone,
            };
            out = h.handle(&mut lp, e);
        }
        if !out.iter().any(terminal) {
            out = h.handle(&mut lp, Event::ClientGone);
        }
        if out.iter().any(|c| matches!(c, Command::Deliver { .. })) {
            let r = match relay { 0 => Relayed::Complete, 1 => Relayed::ClientGone, _ => Relayed::UpstreamFailed("idle_timeout") };
            h.with(|env| lp.settle_delivered(env, r, Duration::ZERO, 5));
        }
        prop_assert!(h.limits.balanced(), "outstanding: {:?}", h.limits.outstanding.borrow());
        for g in 0..2 {
            let routes = h.routes.group(g).unwrap();
            for i in 0..routes.breakers.len() {
                prop_assert_eq!(routes.balancer.inflight(i), 0, "group {} deployment {} still in flight", g, i);
            }
        }
        let r = lp.into_report();
        prop_assert!(r.attempts.iter().all(|a| a.ended.is_some()));
    }
}
