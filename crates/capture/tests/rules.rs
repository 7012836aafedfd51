//! Installing, converging and removing capture rules in real network namespaces.

mod common;

use common::{TestNs, by_chain, privileged};
use strait_capture::{
    CaptureError, CaptureSpec, Iptables, PolicyRouting, apply, installed, remove,
};
use strait_netns::NetNs;

/// The pod's address in these namespaces.
const POD_IP: &str = "198.18.0.2";

fn spec() -> CaptureSpec {
    CaptureSpec {
        exclude_outbound_ports: vec![22, 3306],
        exclude_outbound_cidrs: vec!["198.18.100.0/24".into()],
        exclude_inbound_ports: vec![9090],
        probe_sources: vec!["198.18.0.1".into()],
        pod_ip: Some(POD_IP.parse().unwrap()),
        ..CaptureSpec::default()
    }
}

fn pod_ns() -> TestNs {
    TestNs::with_address(&format!("{POD_IP}/24"))
}

/// Rules of another owner in the policy routing, which must survive us.
const FOREIGN_RULE: &[&str] = &[
    "rule", "add", "priority", "2000", "fwmark", "0x1", "lookup", "7",
];

/// Rules of other owners, as a CNI plugin or the application's own setup could leave them.
const FOREIGN: &str = "\
*nat
:FOREIGN - [0:0]
-A PREROUTING -p udp --dport 53 -j RETURN
-A OUTPUT -j FOREIGN
-A FOREIGN -d 198.18.99.0/24 -j RETURN
COMMIT
";

fn jumps(lines: &[String], chain: &str) -> usize {
    lines
        .iter()
        .filter(|line| line.starts_with(&format!("-A {chain} ")))
        .count()
}

#[test]
fn apply_twice_installs_exactly_one_copy() {
    if !privileged() {
        return;
    }
    let pod = pod_ns();
    apply(&pod.ns, &spec()).unwrap();
    let first = installed(&pod.ns).unwrap();
    let table = pod.nat_table();
    apply(&pod.ns, &spec()).unwrap();
    let second = installed(&pod.ns).unwrap();
    assert_eq!(first, second);
    assert_eq!(table, pod.nat_table());

    assert_eq!(jumps(&second, "PREROUTING"), 1, "{second:#?}");
    assert_eq!(jumps(&second, "OUTPUT"), 1, "{second:#?}");
    assert!(
        second.contains(&"-N STRAIT_INBOUND".to_string()),
        "{second:#?}"
    );
    assert!(
        second.contains(&"-N STRAIT_OUTBOUND".to_string()),
        "{second:#?}"
    );
    // hbone, probe source, excluded port, redirect.
    assert_eq!(jumps(&second, "STRAIT_INBOUND"), 4, "{second:#?}");
    // mark, local destinations, 127/8, two ports, one CIDR, redirect.
    assert_eq!(jumps(&second, "STRAIT_OUTBOUND"), 7, "{second:#?}");
    // The policy routing: one route, the end, eight exemptions, the capturing rule.
    let routing: Vec<&String> = second
        .iter()
        .filter(|line| !line.starts_with('-'))
        .collect();
    assert_eq!(
        routing,
        [
            "1337: from all fwmark 0x539/0xfff goto 1339",
            "1337: from all ipproto tcp sport 15006 goto 1339",
            "1337: from all ipproto tcp sport 15008 goto 1339",
            "1337: from all ipproto tcp sport 9090 goto 1339",
            "1337: from all to 198.18.0.1 goto 1339",
            "1337: from all to 198.18.100.0/24 goto 1339",
            "1337: from all ipproto tcp dport 22 goto 1339",
            "1337: from all ipproto tcp dport 3306 goto 1339",
            "1338: from all iif lo ipproto tcp lookup 1337",
            "1339: from all nop",
            "table 1337: default dev lo scope link src 198.18.0.2",
        ],
        "{second:#?}"
    );
    for expected in [
        "-A STRAIT_OUTBOUND -m mark --mark 0x539/0xfff -j RETURN",
        "-A STRAIT_OUTBOUND -d 198.18.100.0/24 -j RETURN",
        "-A STRAIT_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
        "-A STRAIT_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A STRAIT_INBOUND -s 198.18.0.1/32 -j RETURN",
        "-A STRAIT_INBOUND -p tcp -j REDIRECT --to-ports 15006",
    ] {
        assert!(
            second.contains(&expected.to_string()),
            "missing {expected}: {second:#?}"
        );
    }
}

#[test]
fn apply_converges_from_stale_and_partial_state() {
    if !privileged() {
        return;
    }
    let reference = pod_ns();
    apply(&reference.ns, &spec()).unwrap();
    let expected = by_chain(&installed(&reference.ns).unwrap());

    let pod = pod_ns();
    pod.exec_with_input(&["iptables-restore", "--noflush"], FOREIGN);
    pod.ip(FOREIGN_RULE);
    // Routing of an older rule set: a stale exemption, two capturing rules (the kernel refuses
    // exact duplicates), an old route, and no end rule.
    for rule in [
        "priority 1337 to 10.9.9.0/24 goto 1339",
        "priority 1338 iif lo lookup 1337",
        "priority 1338 iif lo ipproto tcp lookup 1337",
    ] {
        let mut args = vec!["rule", "add"];
        args.extend(rule.split(' '));
        pod.ip(&args);
    }
    pod.ip(&[
        "route",
        "add",
        "local",
        "10.9.0.0/16",
        "dev",
        "lo",
        "table",
        "1337",
    ]);
    // What a crash of an older version could leave: duplicated jumps, a chain that no longer
    // exists in the current rule set (referenced from ours and from a foreign chain), rules with
    // old ports, and no inbound chain at all.
    pod.exec_with_input(
        &["iptables-restore", "--noflush"],
        "\
*nat
:STRAIT_OLD - [0:0]
:STRAIT_OUTBOUND - [0:0]
-A OUTPUT -p tcp -j STRAIT_OUTBOUND
-A OUTPUT -p tcp -j STRAIT_OUTBOUND
-A OUTPUT -j STRAIT_OLD
-A FOREIGN -g STRAIT_OLD
-A STRAIT_OUTBOUND -j STRAIT_OLD
-A STRAIT_OUTBOUND -p tcp -j REDIRECT --to-ports 15999
-A STRAIT_OLD -p tcp -j REDIRECT --to-ports 15998
COMMIT
",
    );
    apply(&pod.ns, &spec()).unwrap();
    let converged = installed(&pod.ns).unwrap();
    assert_eq!(by_chain(&converged), expected);

    // Foreign rules are kept, and our jump is first in OUTPUT.
    let table = pod.nat_table();
    for kept in [
        "-A PREROUTING -p udp -m udp --dport 53 -j RETURN",
        "-A OUTPUT -j FOREIGN",
        "-A FOREIGN -d 198.18.99.0/24 -j RETURN",
    ] {
        assert!(table.contains(kept), "lost {kept}:\n{table}");
    }
    assert!(!table.contains("STRAIT_OLD"), "{table}");
    assert!(
        pod.routing()
            .contains("2000:\tfrom all fwmark 0x1 lookup 7"),
        "lost the foreign rule: {}",
        pod.routing()
    );
    let first_output = table.lines().find(|l| l.starts_with("-A OUTPUT ")).unwrap();
    assert_eq!(first_output, "-A OUTPUT -p tcp -j STRAIT_OUTBOUND");

    // A different spec replaces the rules rather than adding to them.
    let changed = CaptureSpec {
        exclude_outbound_ports: vec![443],
        exclude_outbound_cidrs: vec![],
        ..spec()
    };
    apply(&reference.ns, &changed).unwrap();
    apply(&pod.ns, &changed).unwrap();
    let changed_rules = installed(&pod.ns).unwrap();
    assert_eq!(
        by_chain(&changed_rules),
        by_chain(&installed(&reference.ns).unwrap())
    );
    assert!(
        !changed_rules
            .iter()
            .any(|l| l.contains("3306") || l.contains("198.18.100.0"))
    );
    assert!(changed_rules.iter().any(|l| l.contains("--dport 443")));
    assert!(
        changed_rules
            .iter()
            .any(|l| l.contains("tcp dport 443 goto"))
    );

    // Without the pod's address, the routing goes and the nat rules stay.
    let unrouted = CaptureSpec {
        pod_ip: None,
        ..changed
    };
    apply(&pod.ns, &unrouted).unwrap();
    let unrouted_rules = installed(&pod.ns).unwrap();
    assert!(
        unrouted_rules.iter().all(|line| line.starts_with('-')),
        "{unrouted_rules:#?}"
    );
    assert_eq!(
        unrouted_rules,
        changed_rules
            .iter()
            .filter(|line| line.starts_with('-'))
            .cloned()
            .collect::<Vec<_>>()
    );
}

#[test]
fn routing_that_cannot_be_installed_leaves_capture_in_place() {
    if !privileged() {
        return;
    }
    let pod = pod_ns();
    // An address the namespace does not hold cannot be the source of our route.
    let elsewhere = CaptureSpec {
        pod_ip: Some("198.18.0.99".parse().unwrap()),
        ..spec()
    };
    apply(&pod.ns, &elsewhere).unwrap();
    let rules = installed(&pod.ns).unwrap();
    assert!(
        rules.contains(&"-A STRAIT_OUTBOUND -p tcp -j REDIRECT --to-ports 15001".to_string()),
        "{rules:#?}"
    );
    assert!(
        !rules.iter().any(|line| line.starts_with("1338: ")),
        "{rules:#?}"
    );
    let err = PolicyRouting::locate()
        .unwrap()
        .apply(&pod.ns, &elsewhere)
        .unwrap_err();
    assert!(err.to_string().contains(&pod.name), "{err}");
}

#[test]
fn remove_leaves_the_table_as_it_was() {
    if !privileged() {
        return;
    }
    // A namespace with nothing, and one with rules of other owners.
    for foreign in [None, Some(FOREIGN)] {
        let pod = pod_ns();
        if let Some(rules) = foreign {
            pod.exec_with_input(&["iptables-restore", "--noflush"], rules);
            pod.ip(FOREIGN_RULE);
        }
        let (before, routing_before) = (pod.nat_table(), pod.routing());
        apply(&pod.ns, &spec()).unwrap();
        assert_ne!(pod.nat_table(), before);
        assert_ne!(pod.routing(), routing_before);
        remove(&pod.ns).unwrap();
        assert_eq!(pod.nat_table(), before);
        assert_eq!(pod.routing(), routing_before);
        assert!(installed(&pod.ns).unwrap().is_empty());
        // Removing again is a no-op, not an error.
        remove(&pod.ns).unwrap();
        assert_eq!(pod.nat_table(), before);
        assert_eq!(pod.routing(), routing_before);
    }
}

#[test]
fn invalid_spec_is_rejected_before_touching_the_namespace() {
    if !privileged() {
        return;
    }
    let pod = pod_ns();
    let before = pod.nat_table();
    let bad = CaptureSpec {
        exclude_outbound_cidrs: vec!["198.18.0.0/99".into()],
        ..spec()
    };
    let err = apply(&pod.ns, &bad).unwrap_err();
    assert!(matches!(err, CaptureError::InvalidSpec { .. }), "{err}");
    assert!(err.to_string().contains("198.18.0.0/99"), "{err}");
    assert_eq!(pod.nat_table(), before);
}

#[test]
fn missing_and_failing_programs_are_reported() {
    if !privileged() {
        return;
    }
    let here = NetNs::current().unwrap();
    let missing = Iptables::with_binaries(
        "/nonexistent/iptables-restore",
        "/nonexistent/iptables-save",
    );
    let err = missing.installed(&here).unwrap_err();
    assert!(matches!(err, CaptureError::MissingBinary { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/iptables-save"),
        "{err}"
    );

    let pod = pod_ns();
    let missing_ip = PolicyRouting::with_binary("/nonexistent/ip");
    let err = missing_ip.installed(&here).unwrap_err();
    assert!(
        err.to_string().contains("install the iproute2 package"),
        "{err}"
    );

    let failing = Iptables::with_binaries("false", "iptables-save");
    let err = failing.apply(&pod.ns, &spec()).unwrap_err();
    assert!(matches!(err, CaptureError::Failed { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("false"), "{message}");
    assert!(message.contains(&pod.name), "{message}");
    assert!(installed(&pod.ns).unwrap().is_empty());
}
