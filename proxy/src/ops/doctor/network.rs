//! Checks of the network stack: listen backlog, ephemeral ports, TIME_WAIT reuse, socket
//! migration, the device backlog, binding a privileged port.

use super::{Check, MIN_PORT_RANGE, MIN_SOMAXCONN, RECOMMENDED_NETDEV_BACKLOG};

pub(super) fn check_somaxconn(value: Option<u64>) -> Check {
    const NAME: &str = "somaxconn";
    match value {
        None => Check::warn(NAME, "cannot read /proc/sys/net/core/somaxconn", None),
        Some(v) if v >= MIN_SOMAXCONN => Check::ok(
            NAME,
            format!("net.core.somaxconn = {v} (Sluice's accept backlog is {MIN_SOMAXCONN})"),
        ),
        Some(v) => Check::warn(
            NAME,
            format!(
                "net.core.somaxconn = {v} caps each listener's accept backlog below \
                 {MIN_SOMAXCONN}: connection bursts are dropped (SYN retries cost a second)"
            ),
            Some("sysctl -w net.core.somaxconn=65535".to_string()),
        ),
    }
}

/// `(low, high)` from `ip_local_port_range` ("32768\t60999").
fn parse_port_range(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_whitespace();
    let lo = it.next()?.parse().ok()?;
    let hi = it.next()?.parse().ok()?;
    Some((lo, hi))
}

pub(super) fn check_port_range(text: Option<&str>) -> Check {
    const NAME: &str = "local port range";
    let Some((lo, hi)) = text.and_then(parse_port_range) else {
        return Check::warn(
            NAME,
            "cannot read /proc/sys/net/ipv4/ip_local_port_range",
            None,
        );
    };
    let width = hi.saturating_sub(lo).saturating_add(1);
    let detail = format!("net.ipv4.ip_local_port_range = {lo}-{hi} ({width} ephemeral ports)");
    if width >= MIN_PORT_RANGE {
        Check::ok(NAME, detail)
    } else {
        Check::warn(
            NAME,
            format!(
                "{detail}: fewer than {MIN_PORT_RANGE}; upstream connects fail with \
                 EADDRNOTAVAIL under connection churn"
            ),
            Some("sysctl -w net.ipv4.ip_local_port_range=\"10240 65535\"".to_string()),
        )
    }
}

pub(super) fn check_tw_reuse(value: Option<u64>) -> Check {
    const NAME: &str = "tcp_tw_reuse";
    let fix = Some("sysctl -w net.ipv4.tcp_tw_reuse=1".to_string());
    match value {
        None => Check::warn(NAME, "cannot read /proc/sys/net/ipv4/tcp_tw_reuse", None),
        Some(1) => Check::ok(
            NAME,
            "net.ipv4.tcp_tw_reuse = 1: new upstream connections may reuse ports in TIME_WAIT",
        ),
        Some(2) => Check::warn(
            NAME,
            "net.ipv4.tcp_tw_reuse = 2 (loopback only, the default): upstream connections to \
             providers cannot reuse ports in TIME_WAIT, so churn can exhaust the port range",
            fix,
        ),
        Some(v) => Check::warn(
            NAME,
            format!(
                "net.ipv4.tcp_tw_reuse = {v}: ports in TIME_WAIT are not reused for upstream \
                 connections"
            ),
            fix,
        ),
    }
}

pub(super) fn check_migrate_req(value: Option<u64>, kernel: Option<(u32, u32)>) -> Check {
    const NAME: &str = "tcp_migrate_req";
    match value {
        Some(v) if v != 0 => Check::ok(
            NAME,
            format!(
                "net.ipv4.tcp_migrate_req = {v}: connections queued on a closing listener move \
                 to the new process during a zero-downtime restart"
            ),
        ),
        Some(_) => Check::warn(
            NAME,
            "net.ipv4.tcp_migrate_req = 0: during a zero-downtime restart, connections still \
             queued on the old process's listeners are reset when it stops",
            Some("sysctl -w net.ipv4.tcp_migrate_req=1".to_string()),
        ),
        None if kernel.is_some_and(|k| k < (5, 14)) => Check::warn(
            NAME,
            "kernel older than 5.14 has no net.ipv4.tcp_migrate_req: a zero-downtime restart \
             resets connections queued on the old process's listeners",
            None,
        ),
        None => Check::warn(NAME, "cannot read /proc/sys/net/ipv4/tcp_migrate_req", None),
    }
}

pub(super) fn check_netdev_backlog(value: Option<u64>) -> Check {
    const NAME: &str = "netdev_max_backlog";
    match value {
        None => Check::warn(
            NAME,
            "cannot read /proc/sys/net/core/netdev_max_backlog",
            None,
        ),
        Some(v) if v >= RECOMMENDED_NETDEV_BACKLOG => {
            Check::ok(NAME, format!("net.core.netdev_max_backlog = {v}"))
        }
        Some(v) => Check::warn(
            NAME,
            format!(
                "net.core.netdev_max_backlog = {v}: bursts past {v} queued packets per CPU are \
                 dropped before TCP sees them (recommended {RECOMMENDED_NETDEV_BACKLOG})"
            ),
            Some(format!(
                "sysctl -w net.core.netdev_max_backlog={RECOMMENDED_NETDEV_BACKLOG}"
            )),
        ),
    }
}

/// `CAP_NET_BIND_SERVICE` is capability 10.
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

pub(super) fn check_listen_port(
    port: u16,
    cap_eff: Option<u64>,
    unprivileged_start: Option<u64>,
) -> Check {
    const NAME: &str = "listen port";
    if cap_eff.is_some_and(|c| c & CAP_NET_BIND_SERVICE != 0) {
        return Check::ok(
            NAME,
            format!("port {port}: this process has CAP_NET_BIND_SERVICE"),
        );
    }
    if unprivileged_start.is_some_and(|s| u64::from(port) >= s) {
        return Check::ok(
            NAME,
            format!("port {port}: allowed by net.ipv4.ip_unprivileged_port_start"),
        );
    }
    Check::warn(
        NAME,
        format!(
            "port {port} needs CAP_NET_BIND_SERVICE, which this process lacks (the systemd unit \
             grants it; a shell may not)"
        ),
        Some(
            "setcap cap_net_bind_service=+ep /usr/local/bin/sluice\n\
             # under systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE (tuning/sluice.service)"
                .to_string(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::doctor::Status;

    #[test]
    fn migrate_req_verdicts() {
        assert_eq!(check_migrate_req(Some(1), Some((6, 1))).status, Status::Ok);
        let off = check_migrate_req(Some(0), Some((6, 1)));
        assert_eq!(off.status, Status::Warn);
        assert_eq!(
            off.fix.as_deref(),
            Some("sysctl -w net.ipv4.tcp_migrate_req=1")
        );
        let old = check_migrate_req(None, Some((5, 4)));
        assert_eq!(old.status, Status::Warn);
        assert!(old.detail.contains("5.14"));
    }

    #[test]
    fn sysctl_verdicts() {
        assert_eq!(check_somaxconn(Some(4096)).status, Status::Ok);
        let low = check_somaxconn(Some(128));
        assert_eq!(low.status, Status::Warn);
        assert_eq!(
            low.fix.as_deref(),
            Some("sysctl -w net.core.somaxconn=65535")
        );
        assert_eq!(check_port_range(Some("32768\t60999")).status, Status::Ok);
        assert_eq!(check_port_range(Some("50000 60000")).status, Status::Warn);
        assert_eq!(check_port_range(Some("garbage")).status, Status::Warn);
        assert_eq!(check_tw_reuse(Some(1)).status, Status::Ok);
        assert_eq!(check_tw_reuse(Some(2)).status, Status::Warn);
        assert_eq!(check_netdev_backlog(Some(1000)).status, Status::Warn);
        assert_eq!(check_netdev_backlog(Some(16_384)).status, Status::Ok);
    }

    #[test]
    fn listen_port_verdicts() {
        assert_eq!(
            check_listen_port(443, Some(1 << 10), None).status,
            Status::Ok
        );
        assert_eq!(
            check_listen_port(443, Some(0), Some(1024)).status,
            Status::Warn
        );
        assert_eq!(check_listen_port(443, Some(0), Some(0)).status, Status::Ok);
    }
}
