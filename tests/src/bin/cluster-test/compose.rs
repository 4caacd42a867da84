//! Driving `docker compose` (or `docker-compose`) and `docker` for the cluster
//! test. The project is torn down when [`Compose`] is dropped, whatever happened.

use anyhow::{bail, Context};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;

/// One compose project.
pub struct Compose {
    cmd: Vec<String>,
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

impl Compose {
    /// A project named `project` of `files`, run with `cmd` (`docker compose` or
    /// `docker-compose`) and these extra environment variables.
    pub fn new(cmd: &str, project: &str, files: Vec<PathBuf>, env: Vec<(String, String)>) -> Compose {
        Compose {
            cmd: cmd.split_whitespace().map(str::to_owned).collect(),
            project: project.into(),
            files,
            env,
        }
    }

    /// Runs `compose <args>`; its stdout, or an error with its stderr.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let (program, first) = self.cmd.split_first().context("empty compose command")?;
        let mut c = Command::new(program);
        c.args(first).arg("-p").arg(&self.project);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = c.output().with_context(|| format!("running {}", self.cmd.join(" ")))?;
        if !out.status.success() {
            bail!(
                "{} {}: {}",
                self.cmd.join(" "),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The host address a service's port is published on.
    pub fn port(&self, service: &str, port: u16) -> anyhow::Result<SocketAddr> {
        let out = self.run(&["port", service, &port.to_string()])?;
        out.trim().parse().with_context(|| format!("compose port {service} {port}: {out:?}"))
    }

    /// The container ids of a service.
    pub fn containers(&self, service: &str) -> anyhow::Result<Vec<String>> {
        Ok(self.run(&["ps", "-q", service])?.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
    }

    /// Everything down: containers, networks, volumes.
    pub fn down(&self) {
        if let Err(e) = self.run(&["down", "-v", "--remove-orphans", "-t", "5"]) {
            eprintln!("cluster-test: teardown failed: {e:#}");
        }
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        self.down();
    }
}

/// Runs `docker <args>`; its stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output().context("running docker")?;
    if !out.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A container's address on its (only) network.
pub fn container_ip(id: &str) -> anyhow::Result<IpAddr> {
    let out = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", id])?;
    let ip = out.split_whitespace().next().with_context(|| format!("container {id} has no address"))?;
    ip.parse().with_context(|| format!("container {id}: address {ip:?}"))
}
