//! The image, the command lines and the configuration the manifests give
//! the binary.

use super::*;

#[test]
fn every_container_runs_this_version_of_the_image() {
    let want = format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"));
    for (entry, obj, pod) in pod_specs() {
        let containers = seq(&pod["containers"]);
        assert_eq!(containers.len(), 1, "{entry} {}", name(&obj));
        assert!(seq(&pod["initContainers"]).is_empty());
        for c in containers {
            assert_eq!(
                str_of(&c["image"], "image"),
                want,
                "{entry} {}: image tag follows Cargo.toml's version",
                name(&obj)
            );
            // Arguments only: the image's ENTRYPOINT is the binary, and there is no shell.
            assert!(c["command"].is_null(), "{entry}: no command override");
        }
    }
}

#[test]
fn every_command_line_parses_and_runs_the_intended_subcommand() {
    for (entry, obj, pod) in pod_specs() {
        let c = &seq(&pod["containers"])[0];
        let argv = args(c);
        let cli = Cli::try_parse_from(std::iter::once("pgsteward".to_string()).chain(argv.clone()))
            .unwrap_or_else(|e| panic!("{entry} {}: {argv:?} does not parse: {e}", name(&obj)));
        let intended = match (entry, &cli.command) {
            ("service", Command::Run) => true,
            ("cronjob", Command::Partitions(PartitionsCommand::Apply(_))) => true,
            ("upgrade/plan", Command::Upgrade(UpgradeCommand::Plan { target, .. }))
            | ("upgrade/start", Command::Upgrade(UpgradeCommand::Start { target })) => {
                !target.target_class.is_empty()
            }
            ("upgrade/resume", Command::Upgrade(UpgradeCommand::Resume)) => true,
            ("upgrade/abort", Command::Upgrade(UpgradeCommand::Abort)) => true,
            ("upgrade/status", Command::Upgrade(UpgradeCommand::Status(_))) => true,
            _ => false,
        };
        assert!(intended, "{entry}: {argv:?} runs {:?}", cli.command);

        // --config names the file the ConfigMap volume provides.
        let config_dir = mount_path(&pod, c, |v| {
            v["configMap"]["name"].as_str() == Some("pgsteward-config")
        })
        .unwrap_or_else(|| panic!("{entry}: the config volume is mounted"));
        assert_eq!(
            cli.config.as_deref(),
            Some(Path::new(&config_dir).join("pgsteward.toml").as_path()),
            "{entry}"
        );

        // The built binary agrees (same argv plus --help exits 0 and prints usage).
        let out = pgsteward().args(&argv).arg("--help").output().unwrap();
        assert!(
            out.status.success(),
            "{entry}: {argv:?} --help: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: pgsteward"));
    }
}

#[test]
fn a_misspelled_command_line_would_be_caught() {
    // The check above means something: clap rejects these, and the binary exits 2.
    for bad in [
        vec!["upgrade", "start"],
        vec!["upgrade", "start", "--target", "x"],
        vec!["partitions", "aply"],
    ] {
        assert!(Cli::try_parse_from(std::iter::once("pgsteward").chain(bad.clone())).is_err());
        let out = pgsteward().args(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn configmap_is_accepted_by_the_config_loader_and_matches_the_mounts() {
    let (_dir, path) = configmap_toml();
    let cfg = pgsteward::config::load(&path)
        .unwrap_or_else(|e| panic!("ConfigMap: {e}"))
        .cluster;
    assert_eq!(cfg.upgrade.provider, pgsteward::config::ProviderKind::Rds);
    assert!(cfg.upgrade.rds.as_ref().is_some_and(|r| r.final_snapshot));
    assert!(!cfg.partitions.tables.is_empty());

    for (entry, _, pod) in pod_specs() {
        let c = &seq(&pod["containers"])[0];
        // The CA bundle the URLs name is where the rds-ca volume is mounted.
        let ca = mount_path(&pod, c, |v| {
            v["configMap"]["name"].as_str() == Some("rds-ca-bundle")
        })
        .unwrap_or_else(|| panic!("{entry}: rds-ca mounted"));
        for url in std::iter::once(&cfg.database.primary).chain(&cfg.database.replicas) {
            assert!(
                url.expose().contains(&format!("sslrootcert={ca}/")),
                "{entry}: {url} reads its CA from {ca}"
            );
        }
        if entry.starts_with("upgrade/") {
            let state = mount_path(&pod, c, |v| {
                v["persistentVolumeClaim"]["claimName"].as_str() == Some("pgsteward-upgrade-state")
            })
            .unwrap_or_else(|| panic!("{entry}: the state claim is mounted"));
            assert_eq!(Path::new(&state), cfg.state_dir, "{entry}");
            let pgbouncer = mount_path(&pod, c, |v| {
                v["persistentVolumeClaim"]["claimName"].as_str() == Some("pgbouncer-config")
            })
            .unwrap_or_else(|| panic!("{entry}: the PgBouncer config claim is mounted"));
            for file in &cfg.cutover.config_file {
                assert_eq!(file.parent(), Some(Path::new(&pgbouncer)), "{entry}");
            }
        }
    }
}

#[test]
fn secret_overrides_load_the_way_the_environment_does() {
    // Each Secret key becomes an environment variable (envFrom); figment's Env
    // provider parses its value with `Value::from_str` and nests on `__`. Do the
    // same here without touching this process's environment.
    let (_dir, path) = configmap_toml();
    let secret = &read_yaml_docs(&kube_dir().join("secret.example.yaml"))[0];
    let mut figment = Figment::new().merge(Toml::file_exact(&path));
    let mut primary = None;
    for (k, v) in secret["stringData"].as_mapping().unwrap() {
        let key = str_of(k, "key");
        let value = str_of(v, key);
        let rest = key
            .strip_prefix("PGSTEWARD_")
            .unwrap_or_else(|| panic!("{key}: only PGSTEWARD_ overrides belong here"));
        let dotted = rest.to_lowercase().replace("__", ".");
        let parsed: figment::value::Value = value.parse().unwrap();
        figment = figment.merge(Serialized::default(&dotted, parsed));
        if dotted == "database.primary" {
            primary = Some(value.to_string());
        }
    }
    let cfg = pgsteward::config::from_figment(figment, Some(&path))
        .unwrap_or_else(|e| panic!("ConfigMap + Secret: {e}"))
        .cluster;
    assert_eq!(Some(cfg.database.primary.expose().to_string()), primary);
    assert!(
        !cfg.database.primary.to_string().contains("CHANGE-ME"),
        "redacted"
    );
    assert_eq!(cfg.database.replicas.len(), 1);
    // One name: the headless Service, every pod behind it (pooler::members).
    assert_eq!(cfg.cutover.admin.len(), 1);
}

#[test]
fn plan_and_start_name_the_same_target_class() {
    let class = |job: &str| {
        let j = find("Job", job);
        let argv = args(&seq(&j["spec"]["template"]["spec"]["containers"])[0]);
        let i = argv.iter().position(|a| a == "--target-class").unwrap();
        argv[i + 1].clone()
    };
    assert_eq!(
        class("pgsteward-upgrade-plan"),
        class("pgsteward-upgrade-start")
    );
}
