//! Where a task definition holds the key, and the copy of it that carries a new one.
//!
//! Pure functions over SDK types, so the rewrite is tested without ECS.

use aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionInput;
use aws_sdk_ecs::operation::register_task_definition::builders::RegisterTaskDefinitionInputBuilder;
use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair, Tag, TaskDefinition};
use serde::{Deserialize, Serialize};

/// The names the key may go by, and the container the user limited the search to.
#[derive(Debug, Clone)]
pub(crate) struct Fields {
    pub container: Option<String>,
    pub id: Vec<String>,
    pub secret: Vec<String>,
}

impl Fields {
    fn is_id(&self, name: &str) -> bool {
        self.id.iter().any(|f| f == name)
    }

    fn is_secret(&self, name: &str) -> bool {
        self.secret.iter().any(|f| f == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Tasks read the key from Secrets Manager when they start: a new deployment picks it up.
    Secrets,
    /// The key is written in the task definition: it takes a new revision.
    Environment,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Secrets => "secrets",
            Mode::Environment => "environment",
        }
    }
}

/// Where the key was found. Holds key ids (not secret) and secret ARNs, never a secret value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found {
    pub mode: Mode,
    /// Containers whose `environment` holds both the id and the secret.
    pub env_containers: Vec<String>,
    /// The distinct key ids those containers hold, in container order.
    pub key_ids: Vec<String>,
    /// Secrets Manager ARNs (without the `:json-key:stage:id` suffix) the key is read from.
    pub secret_arns: Vec<String>,
    /// Containers that read the key from those secrets.
    pub secret_containers: Vec<String>,
}

/// A `secrets[].valueFrom` that names a Secrets Manager secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretRef {
    pub arn: String,
    /// What pins the reference to one version, when something does.
    pub pinned: Option<String>,
}

/// Parse `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>[:json-key:version-stage:version-id]`.
/// Anything else (an SSM parameter, by ARN or name) is not a Secrets Manager secret.
pub(crate) fn parse_secret_ref(value_from: &str) -> Option<SecretRef> {
    let parts: Vec<&str> = value_from.split(':').collect();
    if parts.len() < 7
        || parts[0] != "arn"
        || parts[2] != "secretsmanager"
        || parts[5] != "secret"
        || parts[6].is_empty()
    {
        return None;
    }
    let stage = parts.get(8).copied().unwrap_or("");
    let version_id = parts.get(9).copied().unwrap_or("");
    // AWSCURRENT spelled out resolves exactly like no stage: at task start, to the current value.
    let pinned = if !version_id.is_empty() {
        Some(format!("version id {version_id}"))
    } else if !stage.is_empty() && stage != "AWSCURRENT" {
        Some(format!("version stage {stage}"))
    } else {
        None
    };
    Some(SecretRef { arn: parts[..7].join(":"), pinned })
}

/// Find where the containers take the key from. The error says what was searched and how to fix it;
/// the caller prefixes the service and task definition.
pub(crate) fn locate(defs: &[ContainerDefinition], fields: &Fields) -> Result<Found, String> {
    let names: Vec<&str> = defs.iter().map(|c| c.name().unwrap_or("?")).collect();
    let selected: Vec<&ContainerDefinition> = match &fields.container {
        Some(wanted) => {
            let picked: Vec<_> = defs.iter().filter(|c| c.name() == Some(wanted.as_str())).collect();
            if picked.is_empty() {
                return Err(format!(
                    "has no container {wanted:?} (its containers: {}); fix ?container= in the target spec",
                    names.join(", ")
                ));
            }
            picked
        }
        None => defs.iter().collect(),
    };

    let mut found = Found {
        mode: Mode::Secrets,
        env_containers: Vec::new(),
        key_ids: Vec::new(),
        secret_arns: Vec::new(),
        secret_containers: Vec::new(),
    };
    let mut split = Vec::new();
    let mut pinned = Vec::new();
    let mut not_secrets_manager = Vec::new();
    let mut env_files = Vec::new();

    for c in &selected {
        let name = c.name().unwrap_or("?");
        let env = c.environment();
        // The id field named first wins, so `?id-field=` and the upper-case default take precedence.
        let id_value = fields
            .id
            .iter()
            .find_map(|f| env.iter().find(|kv| kv.name() == Some(f.as_str())).and_then(|kv| kv.value()));
        let has_secret = env.iter().any(|kv| kv.name().is_some_and(|n| fields.is_secret(n)));
        match (id_value, has_secret) {
            (Some(id), true) => {
                found.env_containers.push(name.to_string());
                if !found.key_ids.iter().any(|k| k == id) {
                    found.key_ids.push(id.to_string());
                }
            }
            (Some(_), false) => {
                split.push(format!("container {name} has the key id in environment but not the secret"))
            }
            (None, true) => split.push(format!("container {name} has the secret in environment but not the key id")),
            (None, false) => {}
        }
        if !c.environment_files().is_empty() {
            env_files.push(name.to_string());
        }
        for s in c.secrets() {
            if !(fields.is_id(s.name()) || fields.is_secret(s.name())) {
                continue;
            }
            match parse_secret_ref(s.value_from()) {
                Some(SecretRef { pinned: Some(pin), .. }) => {
                    pinned.push(format!("container {name} reads {} from {} pinned to {pin}", s.name(), s.value_from()))
                }
                Some(SecretRef { arn, pinned: None }) => {
                    if !found.secret_arns.contains(&arn) {
                        found.secret_arns.push(arn);
                    }
                    if !found.secret_containers.iter().any(|c| c == name) {
                        found.secret_containers.push(name.to_string());
                    }
                }
                None => not_secrets_manager.push(format!(
                    "container {name} reads {} from {}, which is not a Secrets Manager secret ARN",
                    s.name(),
                    s.value_from()
                )),
            }
        }
    }

    if !pinned.is_empty() {
        return Err(format!(
            "{}: a new deployment would start tasks with the old version again; fix: reference the secret \
             without a version (arn:...:secret:NAME:JSON_KEY::) in a new task definition revision",
            pinned.join("; ")
        ));
    }
    // Rotating one half would hand tasks a key id and a secret that do not belong together.
    if !split.is_empty() {
        return Err(format!(
            "{}: keep the key id and the secret together, both in environment or both in secrets \
             (or name them with ?id-field=NAME&secret-field=NAME)",
            split.join("; ")
        ));
    }
    if !found.env_containers.is_empty() {
        // A new revision restarts every task, so containers reading secrets pick them up as well.
        found.mode = Mode::Environment;
        return Ok(found);
    }
    if !found.secret_arns.is_empty() {
        return Ok(found);
    }

    let mut problem = format!(
        "no container ({}) has {} and {} in environment, or reads them from a Secrets Manager secret",
        selected.iter().map(|c| c.name().unwrap_or("?")).collect::<Vec<_>>().join(", "),
        fields.id.join("/"),
        fields.secret.join("/"),
    );
    for note in not_secrets_manager {
        problem.push_str(&format!("; {note}"));
    }
    if !env_files.is_empty() {
        problem.push_str(&format!(
            "; container {} loads environment files from S3, which rekey does not rewrite",
            env_files.join(", ")
        ));
    }
    problem.push_str(
        "; fix: name the variables with ?id-field=NAME&secret-field=NAME or pick the container with ?container=NAME",
    );
    Err(problem)
}

/// The container definitions with the key replaced in the containers that hold it, and nothing else changed.
pub(crate) fn with_new_key(
    defs: &[ContainerDefinition],
    containers: &[String],
    fields: &Fields,
    key_id: &str,
    secret: &str,
) -> Vec<ContainerDefinition> {
    defs.iter()
        .map(|c| {
            if !c.name().is_some_and(|n| containers.iter().any(|k| k == n)) {
                return c.clone();
            }
            let mut c = c.clone();
            if let Some(env) = c.environment.as_mut() {
                for kv in env.iter_mut() {
                    let Some(name) = kv.name() else { continue };
                    let value = if fields.is_id(name) {
                        key_id
                    } else if fields.is_secret(name) {
                        secret
                    } else {
                        continue;
                    };
                    *kv = KeyValuePair::builder().name(name).value(value).build();
                }
            }
            c
        })
        .collect()
}

/// The registration of a revision identical to `td` but for its container definitions.
///
/// The input's `Debug` prints environment values: it must never be logged.
pub(crate) fn register_input(
    td: &TaskDefinition,
    tags: &[Tag],
    defs: Vec<ContainerDefinition>,
) -> RegisterTaskDefinitionInputBuilder {
    // `aws:` tags are set by AWS and rejected on registration.
    let tags: Vec<Tag> = tags.iter().filter(|t| !t.key().is_some_and(|k| k.starts_with("aws:"))).cloned().collect();
    RegisterTaskDefinitionInput::builder()
        .set_family(td.family.clone())
        .set_task_role_arn(td.task_role_arn.clone())
        .set_execution_role_arn(td.execution_role_arn.clone())
        .set_network_mode(td.network_mode.clone())
        .set_container_definitions(Some(defs))
        .set_volumes(td.volumes.clone())
        .set_placement_constraints(td.placement_constraints.clone())
        .set_requires_compatibilities(td.requires_compatibilities.clone())
        .set_cpu(td.cpu.clone())
        .set_memory(td.memory.clone())
        .set_tags((!tags.is_empty()).then_some(tags))
        .set_pid_mode(td.pid_mode.clone())
        .set_ipc_mode(td.ipc_mode.clone())
        .set_proxy_configuration(td.proxy_configuration.clone())
        .set_ephemeral_storage(td.ephemeral_storage.clone())
        .set_runtime_platform(td.runtime_platform.clone())
        .set_enable_fault_injection(td.enable_fault_injection)
}

/// Whether `candidate` is `original` with only a different key written into it: a revision `apply`
/// registered. That is how a rollback in a new process finds what to deregister without the journal
/// having to record it.
pub(crate) fn is_rewrite_of(candidate: &TaskDefinition, original: &TaskDefinition, fields: &Fields) -> bool {
    let Ok(found) = locate(original.container_definitions(), fields) else {
        return false;
    };
    if found.mode != Mode::Environment || candidate.family != original.family {
        return false;
    }
    let blank = |td: &TaskDefinition| {
        let defs = with_new_key(td.container_definitions(), &found.env_containers, fields, "", "");
        register_input(td, &[], defs).build().ok()
    };
    let key_ids = locate(candidate.container_definitions(), fields).map(|f| f.key_ids);
    blank(candidate) == blank(original) && key_ids.is_ok_and(|ids| ids != found.key_ids)
}

/// `family:revision` of a task definition ARN (`arn:...:task-definition/family:3`).
pub(crate) fn family_revision(arn: &str) -> Option<(&str, i32)> {
    let tail = arn.rsplit_once("task-definition/").map(|(_, t)| t).unwrap_or(arn);
    let (family, rev) = tail.rsplit_once(':')?;
    Some((family, rev.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{Compatibility, CpuArchitecture, NetworkMode, RuntimePlatform, Secret, Volume};

    const SM: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app/aws-AbCdEf";

    fn fields() -> Fields {
        Fields {
            container: None,
            id: vec!["AWS_ACCESS_KEY_ID".into(), "aws_access_key_id".into()],
            secret: vec!["AWS_SECRET_ACCESS_KEY".into(), "aws_secret_access_key".into()],
        }
    }

    fn kv(n: &str, v: &str) -> KeyValuePair {
        KeyValuePair::builder().name(n).value(v).build()
    }

    fn secret(n: &str, from: &str) -> Secret {
        Secret::builder().name(n).value_from(from).build().unwrap()
    }

    fn env_container(name: &str, id: &str) -> ContainerDefinition {
        ContainerDefinition::builder()
            .name(name)
            .image("app:1")
            .environment(kv("LOG_LEVEL", "info"))
            .environment(kv("AWS_ACCESS_KEY_ID", id))
            .environment(kv("AWS_SECRET_ACCESS_KEY", "old-secret"))
            .build()
    }

    fn sidecar() -> ContainerDefinition {
        ContainerDefinition::builder().name("proxy").image("envoy").environment(kv("AWS_ACCESS_KEY_ID_X", "n")).build()
    }

    fn td(defs: Vec<ContainerDefinition>, rev: i32) -> TaskDefinition {
        TaskDefinition::builder()
            .task_definition_arn(format!("arn:aws:ecs:us-east-1:123456789012:task-definition/api:{rev}"))
            .family("api")
            .revision(rev)
            .set_container_definitions(Some(defs))
            .task_role_arn("arn:aws:iam::123456789012:role/task")
            .execution_role_arn("arn:aws:iam::123456789012:role/exec")
            .network_mode(NetworkMode::Awsvpc)
            .volumes(Volume::builder().name("data").build())
            .requires_compatibilities(Compatibility::Fargate)
            .compatibilities(Compatibility::Fargate)
            .cpu("256")
            .memory("512")
            .runtime_platform(RuntimePlatform::builder().cpu_architecture(CpuArchitecture::Arm64).build())
            .build()
    }

    #[test]
    fn parses_secret_references() {
        assert_eq!(parse_secret_ref(SM), Some(SecretRef { arn: SM.into(), pinned: None }));
        let keyed = format!("{SM}:AWS_SECRET_ACCESS_KEY::");
        assert_eq!(parse_secret_ref(&keyed).unwrap().arn, SM);
        assert_eq!(parse_secret_ref(&format!("{SM}:k:AWSCURRENT:")).unwrap().pinned, None);
        assert_eq!(
            parse_secret_ref(&format!("{SM}:k:AWSPREVIOUS:")).unwrap().pinned.unwrap(),
            "version stage AWSPREVIOUS"
        );
        assert!(parse_secret_ref(&format!("{SM}:k::0123-abc")).unwrap().pinned.unwrap().contains("0123-abc"));
        assert_eq!(parse_secret_ref("arn:aws:ssm:us-east-1:123456789012:parameter/app/key"), None);
        assert_eq!(parse_secret_ref("app-key"), None);
    }

    #[test]
    fn finds_environment_mode() {
        let found = locate(&[sidecar(), env_container("web", "AKIAOLD")], &fields()).unwrap();
        assert_eq!(found.mode, Mode::Environment);
        assert_eq!(found.env_containers, vec!["web"]);
        assert_eq!(found.key_ids, vec!["AKIAOLD"]);
    }

    #[test]
    fn finds_secrets_mode_and_strips_suffix() {
        let c = ContainerDefinition::builder()
            .name("web")
            .secrets(secret("AWS_ACCESS_KEY_ID", &format!("{SM}:AWS_ACCESS_KEY_ID::")))
            .secrets(secret("AWS_SECRET_ACCESS_KEY", &format!("{SM}:AWS_SECRET_ACCESS_KEY::")))
            .secrets(secret("DB_PASSWORD", "arn:aws:secretsmanager:us-east-1:1:secret:db-x"))
            .build();
        let found = locate(&[c], &fields()).unwrap();
        assert_eq!(found.mode, Mode::Secrets);
        assert_eq!(found.secret_arns, vec![SM]);
        assert_eq!(found.secret_containers, vec!["web"]);
    }

    #[test]
    fn pinned_secret_is_unusable_with_a_fix() {
        let c = ContainerDefinition::builder()
            .name("web")
            .secrets(secret("AWS_SECRET_ACCESS_KEY", &format!("{SM}:AWS_SECRET_ACCESS_KEY::v-123")))
            .build();
        let e = locate(&[c], &fields()).unwrap_err();
        assert!(e.contains("version id v-123") && e.contains("fix"), "{e}");
    }

    #[test]
    fn neither_names_what_was_searched() {
        let e = locate(&[sidecar()], &fields()).unwrap_err();
        assert!(e.contains("AWS_ACCESS_KEY_ID") && e.contains("?id-field=") && e.contains("?container="), "{e}");
        let ssm = ContainerDefinition::builder()
            .name("web")
            .secrets(secret("AWS_SECRET_ACCESS_KEY", "arn:aws:ssm:us-east-1:1:parameter/k"))
            .build();
        assert!(locate(&[ssm], &fields()).unwrap_err().contains("not a Secrets Manager secret ARN"));
        let f = Fields { container: Some("nope".into()), ..fields() };
        assert!(locate(&[sidecar()], &f).unwrap_err().contains("its containers: proxy"));
    }

    #[test]
    fn half_a_key_in_environment_is_unusable() {
        let c = ContainerDefinition::builder()
            .name("web")
            .environment(kv("AWS_ACCESS_KEY_ID", "AKIAOLD"))
            .secrets(secret("AWS_SECRET_ACCESS_KEY", SM))
            .build();
        assert!(locate(&[c], &fields()).unwrap_err().contains("together"));
    }

    #[test]
    fn container_option_limits_the_search() {
        let defs = [env_container("web", "AKIAWEB"), env_container("worker", "AKIAWORK")];
        let f = Fields { container: Some("worker".into()), ..fields() };
        let found = locate(&defs, &f).unwrap();
        assert_eq!((found.env_containers, found.key_ids), (vec!["worker".to_string()], vec!["AKIAWORK".to_string()]));
    }

    #[test]
    fn rewrite_replaces_only_the_two_values() {
        let old = td(vec![sidecar(), env_container("web", "AKIAOLD")], 7);
        let defs = with_new_key(old.container_definitions(), &["web".into()], &fields(), "AKIANEW", "new-secret");
        let input = register_input(
            &old,
            &[
                Tag::builder().key("team").value("x").build(),
                Tag::builder().key("aws:cloudformation:stack-name").value("s").build(),
            ],
            defs,
        )
        .build()
        .unwrap();

        let new_defs = input.container_definitions();
        assert_eq!(new_defs[0], old.container_definitions()[0], "other containers untouched");
        assert_eq!(
            new_defs[1].environment(),
            &[kv("LOG_LEVEL", "info"), kv("AWS_ACCESS_KEY_ID", "AKIANEW"), kv("AWS_SECRET_ACCESS_KEY", "new-secret")]
        );
        let mut expected = old.container_definitions()[1].clone();
        expected.environment = new_defs[1].environment.clone();
        assert_eq!(new_defs[1], expected, "only environment changed");

        assert_eq!(input.family(), Some("api"));
        assert_eq!(input.task_role_arn(), old.task_role_arn());
        assert_eq!(input.execution_role_arn(), old.execution_role_arn());
        assert_eq!(input.network_mode(), old.network_mode());
        assert_eq!(input.volumes(), old.volumes());
        assert_eq!(input.requires_compatibilities(), old.requires_compatibilities());
        assert_eq!((input.cpu(), input.memory()), (Some("256"), Some("512")));
        assert_eq!(input.runtime_platform(), old.runtime_platform());
        assert_eq!(input.tags().iter().filter_map(|t| t.key()).collect::<Vec<_>>(), vec!["team"]);
    }

    #[test]
    fn recognises_its_own_revisions() {
        let old = td(vec![sidecar(), env_container("web", "AKIAOLD")], 7);
        let mut ours = td(with_new_key(old.container_definitions(), &["web".into()], &fields(), "AKIANEW", "s"), 8);
        assert!(is_rewrite_of(&ours, &old, &fields()));
        assert!(!is_rewrite_of(&old, &old, &fields()), "the same key is not a rewrite");
        ours.cpu = Some("1024".into());
        assert!(!is_rewrite_of(&ours, &old, &fields()), "someone else's change");
    }

    #[test]
    fn parses_family_and_revision() {
        assert_eq!(family_revision("arn:aws:ecs:us-east-1:1:task-definition/api:12"), Some(("api", 12)));
        assert_eq!(family_revision("api:3"), Some(("api", 3)));
        assert_eq!(family_revision("arn:aws:ecs:us-east-1:1:task-definition/api"), None);
    }
}
