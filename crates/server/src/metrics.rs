//! The server's figures in Prometheus's text exposition format (version 0.0.4), for
//! `GET /metrics`.
//!
//! Every figure comes from the reads the API answers with: `Server::images`, `clones` and
//! `agents`, and the catalog's operations filtered as `GET /v1/operations` filters them.
//! So a scrape and the API agree, a caller sees in it only what the API shows them (an
//! administrator everything, others their teams' images, clones and operations; everyone
//! the agents), and a scrape asks the agents no more than `GET /v1/clones` and
//! `GET /v1/agents` do.

use std::fmt::{Display, Write};

use api::agent::{Agent, AgentStatus};
use api::{CloneStatus, Driver, ImageStatus, OperationKind, OperationState};

use crate::auth::Caller;
use crate::ops::{Result, Server};

/// The upper bounds (seconds) of the operation duration histogram's buckets, `+Inf` aside.
/// The catalog records times to the second, so durations are whole seconds.
const DURATION_BUCKETS: [u64; 9] = [1, 2, 5, 10, 30, 60, 300, 900, 3600];

/// The metrics the caller may see, as Prometheus's text format.
pub fn render(server: &Server, caller: &Caller) -> Result<String> {
    let images = server.images(caller)?;
    let clones = server.clones(caller)?;
    let agents = server.agents(caller)?;
    // Every operation the catalog keeps (the latest 1000 ended ones and every running one),
    // of the caller's teams.
    let operations = server
        .catalog()
        .operations(u32::MAX)?
        .into_iter()
        .filter(|row| caller.sees(&row.team))
        .map(|row| OperationFigure {
            kind: row.kind,
            state: row.state,
            seconds: row.finished_at.map(|end| row.created_at.age(end)),
        })
        .collect();
    Ok(Snapshot { images, clones, operations, agents }.exposition())
}

/// A gauge with a sample per object: its name, its help, and its value for an object.
type PerObject<T> = (&'static str, &'static str, fn(&T) -> u64);

/// One operation, as far as the metrics are concerned.
struct OperationFigure {
    kind: OperationKind,
    state: OperationState,
    /// From its start to its end, once it has ended.
    seconds: Option<u64>,
}

/// What a scrape shows, read once.
struct Snapshot {
    images: Vec<api::Image>,
    clones: Vec<api::Clone>,
    operations: Vec<OperationFigure>,
    agents: Vec<Agent>,
}

/// Figures by key, in the order the keys were first given: the listed ones first (each at
/// its default, 0, until counted), then any other that turns up (a state added later is still
/// counted).
struct Tally<K, V>(Vec<(K, V)>);

impl<K: PartialEq, V: Default> Tally<K, V> {
    fn listed(keys: impl IntoIterator<Item = K>) -> Tally<K, V> {
        Tally(keys.into_iter().map(|k| (k, V::default())).collect())
    }

    fn entry(&mut self, key: K) -> &mut V {
        let i = match self.0.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.0.push((key, V::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

/// Durations, as a Prometheus histogram counts them: each bucket holds those at or under its
/// bound (so the buckets are cumulative).
#[derive(Default)]
struct Histogram {
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: u64) {
        for (bound, count) in DURATION_BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

impl Snapshot {
    fn exposition(&self) -> String {
        let mut out = Exposition::default();
        out.family("thinclone_build_info", "gauge", "The server's version, as GET /v1/health answers it; always 1.");
        out.sample("thinclone_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
        self.images(&mut out);
        self.clones(&mut out);
        self.operations(&mut out);
        self.agents(&mut out);
        out.text
    }

    fn images(&self, out: &mut Exposition) {
        let mut by_state: Tally<_, u64> = Tally::listed(ImageStatus::ALL.map(ImageStatus::as_str));
        for image in &self.images {
            *by_state.entry(image.status.as_str()) += 1;
        }
        out.family(
            "thinclone_images",
            "gauge",
            "Images by status (the caller's teams', every team's for an administrator).",
        );
        for (state, count) in by_state.0 {
            out.sample("thinclone_images", &[("state", state)], count);
        }
        let per_image: [PerObject<api::Image>; 2] = [
            (
                "thinclone_image_logical_bytes",
                "The size of an image's files as the database sees them, in bytes.",
                |i| i.logical_bytes,
            ),
            ("thinclone_image_stored_bytes", "The disk an image's files occupy, in bytes.", |i| i.stored_bytes),
        ];
        for (name, help, value) in per_image {
            out.family(name, "gauge", help);
            for image in &self.images {
                out.sample(name, &[("image", image.name.as_str()), ("team", image.team.as_str())], value(image));
            }
        }
    }

    fn clones(&self, out: &mut Exposition) {
        let mut by_state: Tally<_, u64> =
            Tally::listed(CloneStatus::ALL.iter().flat_map(|s| Driver::ALL.map(|d| (s.as_str(), d.as_str()))));
        for clone in &self.clones {
            *by_state.entry((clone.status.as_str(), clone.driver.as_str())) += 1;
        }
        out.family(
            "thinclone_clones",
            "gauge",
            "Clones by status and driver (the caller's teams', every team's for an administrator).",
        );
        for ((state, driver), count) in by_state.0 {
            out.sample("thinclone_clones", &[("state", state), ("driver", driver)], count);
        }
        let per_clone: [PerObject<api::Clone>; 3] = [
            (
                "thinclone_clone_logical_bytes",
                "The size of a clone's image's files, in bytes, as GET /v1/clones answers it.",
                |c| c.logical_bytes,
            ),
            (
                "thinclone_clone_stored_bytes",
                "The disk a clone uses beyond its image, in bytes, as its agent last measured it (GET /v1/clones).",
                |c| c.stored_bytes,
            ),
            ("thinclone_clone_protected", "1 if a clone is protected from expiry, idle removal and removal.", |c| {
                u64::from(c.protected)
            }),
        ];
        for (name, help, value) in per_clone {
            out.family(name, "gauge", help);
            for clone in &self.clones {
                out.sample(name, &clone_labels(clone), value(clone));
            }
        }
        out.family(
            "thinclone_clone_expires_at_seconds",
            "gauge",
            "When the server removes a clone, in Unix seconds; clones without an expiry are not listed.",
        );
        for clone in &self.clones {
            if let Some(at) = clone.expires_at {
                out.sample("thinclone_clone_expires_at_seconds", &clone_labels(clone), at.unix_seconds());
            }
        }
    }

    fn operations(&self, out: &mut Exposition) {
        let mut by_state: Tally<_, u64> = Tally::listed(
            OperationKind::ALL.iter().flat_map(|k| OperationState::ALL.map(|s| (k.as_str(), s.as_str()))),
        );
        let mut durations: Tally<_, Histogram> = Tally::listed(OperationKind::ALL.map(OperationKind::as_str));
        for op in &self.operations {
            *by_state.entry((op.kind.as_str(), op.state.as_str())) += 1;
            if let Some(seconds) = op.seconds {
                durations.entry(op.kind.as_str()).observe(seconds);
            }
        }
        out.family(
            "thinclone_operations",
            "gauge",
            "Operations by kind and state, among those the server keeps (the latest 1000 ended and every running one).",
        );
        for ((kind, state), count) in by_state.0 {
            out.sample("thinclone_operations", &[("kind", kind), ("state", state)], count);
        }
        let name = "thinclone_operation_duration_seconds";
        out.family(
            name,
            "histogram",
            "How long ended operations took, by kind, in whole seconds (the catalog records times to the second), \
             among those the server keeps (the latest 1000 ended): counts fall as old ones are dropped.",
        );
        let (bucket, sum, count) = (format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count"));
        for (kind, histogram) in durations.0 {
            for (bound, n) in DURATION_BUCKETS.iter().zip(histogram.buckets) {
                out.sample(&bucket, &[("kind", kind), ("le", &bound.to_string())], n);
            }
            out.sample(&bucket, &[("kind", kind), ("le", "+Inf")], histogram.count);
            out.sample(&sum, &[("kind", kind)], histogram.sum);
            out.sample(&count, &[("kind", kind)], histogram.count);
        }
    }

    fn agents(&self, out: &mut Exposition) {
        out.family(
            "thinclone_agent_up",
            "gauge",
            "1 if an agent is connected and answers, 0 if unreachable or revoked.",
        );
        for agent in &self.agents {
            out.sample(
                "thinclone_agent_up",
                &[("agent", agent.name.as_str())],
                u64::from(agent.status == AgentStatus::Online),
            );
        }
        out.family(
            "thinclone_agent_free_bytes",
            "gauge",
            "Free disk where an agent keeps clones, in bytes, as it last reported; agents that never reported are not listed.",
        );
        for agent in &self.agents {
            if let Some(free) = agent.free_bytes {
                out.sample("thinclone_agent_free_bytes", &[("agent", agent.name.as_str())], free);
            }
        }
        out.family(
            "thinclone_agent_free_ports",
            "gauge",
            "The clone ports an agent has left in the server's port range.",
        );
        for agent in &self.agents {
            if let Some(free) = agent.free_ports {
                out.sample("thinclone_agent_free_ports", &[("agent", agent.name.as_str())], free);
            }
        }
    }
}

fn clone_labels(clone: &api::Clone) -> [(&str, &str); 4] {
    [
        ("clone", clone.name.as_str()),
        ("image", clone.image.as_str()),
        ("agent", clone.agent.as_str()),
        ("team", clone.team.as_str()),
    ]
}

/// The text being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a metric family: its `HELP` and `TYPE` lines.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample line, its label values escaped as the format says.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let value = value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n");
                let _ = write!(self.text, "{label}=\"{value}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Exposition::default();
        out.family("m", "gauge", "a \\ back\nslash");
        out.sample("m", &[("a", "x\"y\\z\nw"), ("b", "")], 3);
        out.sample("m", &[], 0);
        assert_eq!(out.text, "# HELP m a \\\\ back\\nslash\n# TYPE m gauge\nm{a=\"x\\\"y\\\\z\\nw\",b=\"\"} 3\nm 0\n");
    }

    #[test]
    fn the_histogram_is_cumulative_and_every_kind_and_state_is_listed() {
        let op = |kind, state, seconds| OperationFigure { kind, state, seconds };
        let snapshot = Snapshot {
            images: Vec::new(),
            clones: Vec::new(),
            agents: Vec::new(),
            operations: vec![
                op(OperationKind::CloneCreate, OperationState::Succeeded, Some(0)),
                op(OperationKind::CloneCreate, OperationState::Failed, Some(7)),
                op(OperationKind::CloneCreate, OperationState::Running, None),
                op(OperationKind::ImageCreate, OperationState::Succeeded, Some(5000)),
            ],
        };
        let text = snapshot.exposition();
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        has(r#"thinclone_operations{kind="clone_create",state="running"} 1"#);
        has(r#"thinclone_operations{kind="clone_create",state="failed"} 1"#);
        has(r#"thinclone_operations{kind="clone_reset",state="succeeded"} 0"#);
        has(r#"thinclone_operation_duration_seconds_bucket{kind="clone_create",le="1"} 1"#);
        has(r#"thinclone_operation_duration_seconds_bucket{kind="clone_create",le="5"} 1"#);
        has(r#"thinclone_operation_duration_seconds_bucket{kind="clone_create",le="10"} 2"#);
        has(r#"thinclone_operation_duration_seconds_bucket{kind="clone_create",le="+Inf"} 2"#);
        has(r#"thinclone_operation_duration_seconds_sum{kind="clone_create"} 7"#);
        has(r#"thinclone_operation_duration_seconds_count{kind="clone_create"} 2"#);
        has(r#"thinclone_operation_duration_seconds_bucket{kind="image_create",le="3600"} 0"#);
        has(r#"thinclone_operation_duration_seconds_bucket{kind="image_create",le="+Inf"} 1"#);
        has(r#"thinclone_operation_duration_seconds_count{kind="clone_stop"} 0"#);
        has(r#"thinclone_images{state="creating"} 0"#);
        has(r#"thinclone_clones{state="unknown",driver="copy"} 0"#);
        // Each family is described once, before its samples.
        for family in ["thinclone_images", "thinclone_clones", "thinclone_operation_duration_seconds"] {
            assert_eq!(text.matches(&format!("# TYPE {family} ")).count(), 1, "{family}");
        }
    }
}
