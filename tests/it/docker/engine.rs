//! A Docker daemon of the test's own, and the image built without a registry.
//!
//! The daemon (Debian's `docker.io`, installed when missing) runs with its
//! own data root, exec root, pid file and socket in a temporary directory, no
//! bridge network and no iptables rules, so it neither clashes with another
//! daemon nor touches the host's network; it is stopped on drop, and by a
//! watchdog when the test process dies.
//!
//! No image registry can be reached, so the runtime base is made here from
//! Debian's own packages, which is how distroless/cc-debian12 is made too:
//! libc6, libgcc-s1 and the CA bundle of ca-certificates, plus the nonroot
//! user. It is cached as a tar file keyed by the recipe and the host's glibc,
//! so only the first run on a machine downloads anything.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The packages of the base; what the binary links against must be in them.
const BASE_PACKAGES: [&str; 3] = ["libc6", "libgcc-s1", "ca-certificates"];
/// Part of the cache key: change it whenever the way the base is made changes.
const BASE_RECIPE: &str = "v1 libc6 libgcc-s1 ca-certificates; no gconv, docs, man, sbin; \
                           CA bundle; passwd/group nonroot 65532; nsswitch; tmp; home/nonroot";
/// distroless's environment: the rustls trust store is read from SSL_CERT_FILE.
const BASE_ENV: [&str; 2] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
];
/// The nonroot user of distroless (uid and gid 65532), as the manifests run it.
pub const NONROOT: u32 = 65532;

/// Runs `cmd`, panicking with its output unless it exits 0; returns stdout.
#[track_caller]
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = output(cmd, what);
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
pub fn output(cmd: &mut Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()))
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn apt_get(args: &[&str]) -> Output {
    output(
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=120", "-qq"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get",
    )
}

/// `apt-get` with one `apt-get update` and a retry when the lists are missing or stale.
fn apt_get_ok(args: &[&str], dir: Option<&Path>) {
    let attempt = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["-o", "DPkg::Lock::Timeout=120", "-qq"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        output(&mut cmd, "apt-get")
    };
    if attempt().status.success() {
        return;
    }
    let _ = apt_get(&["update"]);
    let out = attempt();
    assert!(
        out.status.success(),
        "apt-get {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Engine {
    child: Child,
    dir: TempDir,
    cli: PathBuf,
}

impl Engine {
    /// Installs docker.io when missing and starts a daemon of this test's own.
    pub fn start() -> Engine {
        if find_program("dockerd").is_none() {
            // Only these tests need Docker, so scripts/test does not install it:
            // as root they do; otherwise they fail naming the command.
            assert!(
                nix::unistd::geteuid().is_root(),
                "tests/it/docker.rs builds the image and runs its pods under a Docker daemon of \
                 its own, and there is no dockerd: sudo apt-get update && sudo apt-get install -y \
                 docker.io (or leave these tests out: scripts/test -- --skip docker::)"
            );
            eprintln!("installing docker.io (no dockerd on this machine)");
            apt_get_ok(
                &["install", "-y", "--no-install-recommends", "docker.io"],
                None,
            );
        }
        let dockerd = find_program("dockerd").expect("dockerd after installing docker.io");
        // The package's client matches its daemon; any other `docker` is a fallback.
        let cli = [PathBuf::from("/usr/bin/docker")]
            .into_iter()
            .find(|p| p.is_file())
            .or_else(|| find_program("docker"))
            .expect("a docker client (docker.io ships one)");
        let dir = tempfile::Builder::new()
            .prefix("pgsteward-docker-")
            .tempdir()
            .expect("temp dir for the docker daemon");
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}\n").expect("write daemon.json");
        let log = std::fs::File::create(d.join("dockerd.log")).expect("create dockerd.log");
        let mut cmd = Command::new(dockerd);
        // The daemon picks the first driver that works (overlay2, else vfs...);
        // TEST_DOCKER_STORAGE_DRIVER forces one (not PGSTEWARD_: the config loader owns that prefix).
        if let Ok(driver) = std::env::var("TEST_DOCKER_STORAGE_DRIVER") {
            cmd.arg(format!("--storage-driver={driver}"));
        }
        let child = cmd
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        // Stops the daemon when this test process is gone, even if it was killed.
        let _ = Command::new("/bin/sh")
            .args([
                "-c",
                &format!(
                    "while [ -d /proc/{me} ] && [ -d /proc/{d} ]; do sleep 1; done; kill {d} 2>/dev/null",
                    me = std::process::id(),
                    d = child.id()
                ),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let mut engine = Engine { child, dir, cli };
        engine.wait_ready(Duration::from_secs(60));
        engine
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = output(
                self.docker()
                    .args(["version", "--format", "{{.Server.Version}}"]),
                "docker version",
            );
            if out.status.success() {
                return;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "dockerd did not come up ({exited:?}); its log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The client, talking to this daemon only (no ~/.docker, no DOCKER_HOST).
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new(&self.cli);
        cmd.env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .arg("--host")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ));
        cmd
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        run_ok(
            self.docker().args(args),
            &format!("docker {}", args.join(" ")),
        )
    }

    /// A container's stdout and stderr (pgsteward logs on stderr), then the daemon's log tail.
    pub fn logs(&self, name: &str) -> String {
        let out = output(self.docker().args(["logs", name]), "docker logs");
        format!(
            "{}{}\n--- dockerd:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        )
    }

    /// The storage driver the daemon chose (overlay2 where the kernel allows).
    pub fn storage_driver(&self) -> String {
        self.ok(&["info", "--format", "{{.Driver}}"])
            .trim()
            .to_string()
    }

    /// Imports the cached base and builds deploy/Dockerfile's runtime stage
    /// around `binary` as `tag`. Returns the base's tag.
    pub fn build_runtime_image(&self, dockerfile: &Path, binary: &Path, tag: &str) -> String {
        let (tar, key) = base_tar();
        check_linkage(binary, &tar);
        let base = format!("pgsteward-test-base:{key}");
        let mut import = self.docker();
        import.arg("import");
        for env in BASE_ENV {
            import.arg("--change").arg(format!("ENV {env}"));
        }
        run_ok(import.arg(&tar).arg(&base), "docker import");

        let text = std::fs::read_to_string(dockerfile).expect("read deploy/Dockerfile");
        let ctx = tempfile::tempdir().expect("build context");
        std::fs::write(ctx.path().join("Dockerfile"), runtime_stage(&text))
            .expect("write Dockerfile");
        if std::fs::hard_link(binary, ctx.path().join("pgsteward")).is_err() {
            std::fs::copy(binary, ctx.path().join("pgsteward")).expect("copy the binary");
        }
        // The classic builder: BuildKit would fetch the `# syntax=` frontend image.
        run_ok(
            self.docker()
                .env("DOCKER_BUILDKIT", "0")
                .args(["build", "--quiet", "--build-arg"])
                .arg(format!("RUNTIME_BASE={base}"))
                .args(["--tag", tag])
                .arg(ctx.path()),
            "docker build",
        );
        base
    }

    /// Size of an image in bytes, as `docker image ls` reports it.
    pub fn image_size(&self, image: &str) -> u64 {
        let s = self.ok(&["image", "inspect", "--format", "{{.Size}}", image]);
        s.trim()
            .parse()
            .unwrap_or_else(|e| panic!("image size {s:?}: {e}"))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SIGTERM: the daemon stops its containers and unmounts their layers.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Anything the daemon left mounted under its directory, deepest first.
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

/// deploy/Dockerfile's global ARGs and its last stage, with the binary copied
/// from the build context instead of the builder stage: the image is the
/// Dockerfile's own runtime stage, whatever it says, around this test's binary.
pub fn runtime_stage(dockerfile: &str) -> String {
    let lines: Vec<&str> = dockerfile.lines().collect();
    let first_from = lines
        .iter()
        .position(|l| l.starts_with("FROM "))
        .expect("a FROM in deploy/Dockerfile");
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM in deploy/Dockerfile");
    assert!(
        last_from > first_from,
        "deploy/Dockerfile is multi-stage: a builder, then the runtime"
    );
    let mut out: Vec<String> = lines[..first_from]
        .iter()
        .filter(|l| l.starts_with("ARG "))
        .map(|l| l.to_string())
        .collect();
    let mut copied = 0;
    for l in &lines[last_from..] {
        if let Some(rest) = l.strip_prefix("COPY --from=builder /out/pgsteward ") {
            copied += 1;
            out.push(format!("COPY pgsteward {rest}"));
        } else {
            assert!(
                !l.contains("--from="),
                "{l}: the runtime stage copies only the binary"
            );
            out.push(l.to_string());
        }
    }
    assert_eq!(
        copied, 1,
        "the runtime stage copies /out/pgsteward from the builder once"
    );
    out.join("\n") + "\n"
}

fn host_glibc() -> String {
    let out = output(
        Command::new("dpkg-query").args(["-W", "-f", "${Version} ${Architecture}", "libc6"]),
        "dpkg-query",
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn cache_dir() -> PathBuf {
    let preferred = PathBuf::from("/var/cache/pgsteward-test");
    if std::fs::create_dir_all(&preferred).is_ok() {
        return preferred;
    }
    let fallback = std::env::temp_dir().join("pgsteward-test-cache");
    std::fs::create_dir_all(&fallback).expect("create the test cache directory");
    fallback
}

/// The base's root filesystem as a tar file, made once per recipe and host glibc.
fn base_tar() -> (PathBuf, String) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (BASE_RECIPE, host_glibc()).hash(&mut h);
    let key = format!("{:016x}", h.finish());
    let dir = cache_dir();
    let tar = dir.join(format!("debian12-base-{key}.tar"));
    if tar.metadata().is_ok_and(|m| m.len() > 0) {
        return (tar, key);
    }
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("base-")
        .tempdir_in(&dir)
        .expect("work dir for the base");
    let debs = work.path().join("debs");
    let root = work.path().join("root");
    std::fs::create_dir_all(&debs).expect("mkdir debs");
    std::fs::create_dir_all(&root).expect("mkdir root");
    // _apt downloads into a directory it can write, else apt warns and does it as root.
    let _ = std::fs::set_permissions(&debs, std::fs::Permissions::from_mode(0o777));
    let mut args = vec!["download"];
    args.extend(BASE_PACKAGES);
    apt_get_ok(&args, Some(&debs));
    for deb in std::fs::read_dir(&debs).expect("read debs") {
        let deb = deb.expect("deb entry").path();
        run_ok(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            "dpkg-deb -x",
        );
    }
    make_base_root(&root);
    let partial = work.path().join("base.tar");
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "--sort=name", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
        "tar the base",
    );
    std::fs::rename(&partial, &tar).expect("move the base into the cache");
    eprintln!(
        "made the base {} in {:.1}s",
        tar.display(),
        started.elapsed().as_secs_f64()
    );
    (tar, key)
}

/// Trims the unpacked packages to what runs a program, as distroless does.
fn make_base_root(root: &Path) {
    let rm = |p: &str| {
        let p = root.join(p);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    };
    // The CA bundle update-ca-certificates would make: every certificate, in name order.
    let mozilla = root.join("usr/share/ca-certificates/mozilla");
    let mut certs: Vec<PathBuf> = std::fs::read_dir(&mozilla)
        .expect("ca-certificates' certificates")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    certs.sort();
    assert!(certs.len() > 50, "ca-certificates has its bundle");
    let mut bundle = String::new();
    for c in &certs {
        let pem = std::fs::read_to_string(c).expect("read a certificate");
        bundle.push_str(pem.trim_end());
        bundle.push('\n');
    }
    std::fs::create_dir_all(root.join("etc/ssl/certs")).expect("mkdir etc/ssl/certs");
    std::fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), bundle).expect("write bundle");
    for p in [
        "usr/share",
        "usr/sbin",
        "etc/ca-certificates",
        "etc/ca-certificates.conf",
    ] {
        rm(p);
    }
    // iconv modules: nothing in the binary converts character sets.
    for lib in ["usr/lib", "lib"] {
        if let Ok(entries) = std::fs::read_dir(root.join(lib)) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path().join("gconv"));
            }
        }
    }
    let write = |p: &str, text: &str, mode: u32| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write base file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    write(
        "etc/passwd",
        "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
         nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        0o644,
    );
    write(
        "etc/group",
        "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n",
        0o644,
    );
    write("etc/nsswitch.conf", "hosts: files dns\n", 0o644);
    for (d, mode) in [("tmp", 0o1777), ("home/nonroot", 0o700), ("root", 0o700)] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::os::unix::fs::chown(root.join("home/nonroot"), Some(NONROOT), Some(NONROOT))
        .expect("chown home/nonroot");
}

/// Every library `ldd` resolves for the binary is in the base (by file name),
/// so a missing one fails here with its name, not as a loader error later.
fn check_linkage(binary: &Path, tar: &Path) {
    let listed = run_ok(Command::new("tar").arg("-tf").arg(tar), "tar -tf");
    let names: BTreeSet<&str> = listed
        .lines()
        .filter_map(|l| l.trim_end_matches('/').rsplit('/').next())
        .collect();
    let ldd = run_ok(Command::new("ldd").arg(binary), "ldd");
    let mut missing = Vec::new();
    for line in ldd.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        let name = first.rsplit('/').next().unwrap_or(first);
        // A static binary needs nothing from the base.
        if line.contains("statically linked") || line.contains("not a dynamic executable") {
            return;
        }
        if name.is_empty() || name.starts_with("linux-vdso") {
            continue;
        }
        if line.contains("not found") || !names.contains(name) {
            missing.push(line.trim().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "{} links against libraries the base lacks (add their packages to BASE_PACKAGES): {missing:?}",
        binary.display()
    );
}
