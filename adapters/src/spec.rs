//! Target specs as users write them: `kind:location[?option=value&option=value]`.

use std::fmt;
use std::str::FromStr;

/// Field names an adapter looks for when the spec does not name them.
pub const DEFAULT_ID_FIELD: &str = "AWS_ACCESS_KEY_ID";
pub const DEFAULT_SECRET_FIELD: &str = "AWS_SECRET_ACCESS_KEY";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    SecretsManager,
    Ecs,
    Env,
    Ssm,
    Lambda,
    Profile,
    Exec,
}

impl TargetKind {
    const ALL: [(&'static str, TargetKind); 7] = [
        ("secretsmanager", TargetKind::SecretsManager),
        ("ecs", TargetKind::Ecs),
        ("env", TargetKind::Env),
        ("ssm", TargetKind::Ssm),
        ("lambda", TargetKind::Lambda),
        ("profile", TargetKind::Profile),
        ("exec", TargetKind::Exec),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map(|(s, _)| *s).unwrap_or("?")
    }

    /// Options each kind understands; anything else in a spec is a typo worth stopping for.
    fn options(self) -> &'static [&'static str] {
        match self {
            TargetKind::SecretsManager => &["id-field", "secret-field"],
            TargetKind::Ecs => &["container", "id-field", "secret-field"],
            TargetKind::Env => &["id-field", "secret-field"],
            TargetKind::Ssm => &["id-field", "secret-field", "secret-param"],
            TargetKind::Lambda => &["id-field", "secret-field"],
            TargetKind::Profile => &[],
            // The whole location is the command: nothing after it is parsed as options.
            TargetKind::Exec => &[],
        }
    }
}

/// A parsed `--target` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// The text the user wrote, used to name the target in every message.
    pub raw: String,
    pub kind: TargetKind,
    /// The secret id, `cluster/service` or file path.
    pub location: String,
    pub options: Vec<(String, String)>,
}

impl TargetSpec {
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The field or variable names holding the key id, the one named in the spec first.
    pub fn id_fields(&self) -> Vec<String> {
        match self.option("id-field") {
            Some(f) => vec![f.to_string()],
            None => vec![DEFAULT_ID_FIELD.to_string(), DEFAULT_ID_FIELD.to_lowercase()],
        }
    }

    pub fn secret_fields(&self) -> Vec<String> {
        match self.option("secret-field") {
            Some(f) => vec![f.to_string()],
            None => vec![DEFAULT_SECRET_FIELD.to_string(), DEFAULT_SECRET_FIELD.to_lowercase()],
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad target spec {spec:?}: {problem}; {fix}")]
pub struct SpecError {
    pub spec: String,
    pub problem: String,
    pub fix: String,
}

const FORMS: &str = "use secretsmanager:<secret-id>, ecs:[<cluster>/]<service>, env:<path>, ssm:<parameter>, \
     lambda:<function>, profile:<name>[@<file>] or exec:<command>, optionally followed by ?option=value";

impl FromStr for TargetSpec {
    type Err = SpecError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let err = |problem: String, fix: &str| SpecError { spec: raw.to_string(), problem, fix: fix.to_string() };
        let Some((kind_text, rest)) = raw.split_once(':') else {
            return Err(err("no kind before ':'".into(), FORMS));
        };
        let kind = TargetKind::ALL
            .iter()
            .find(|(name, _)| *name == kind_text)
            .map(|(_, k)| *k)
            .ok_or_else(|| err(format!("unknown kind {kind_text:?}"), FORMS))?;
        let (location, query) = match rest.split_once('?').filter(|_| kind != TargetKind::Exec) {
            Some((l, q)) => (l, Some(q)),
            None => (rest, None),
        };
        if location.is_empty() {
            return Err(err(format!("no location after '{kind_text}:'"), FORMS));
        }
        let mut options = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| err(format!("option {pair:?} has no value"), "write option=value"))?;
            if !kind.options().contains(&k) {
                return Err(err(
                    format!("{} targets have no option {k:?}", kind.as_str()),
                    &format!("known options: {}", kind.options().join(", ")),
                ));
            }
            if v.is_empty() {
                return Err(err(format!("option {k:?} is empty"), "give it a value or leave it out"));
            }
            options.push((k.to_string(), v.to_string()));
        }
        if kind == TargetKind::Ecs {
            let parts: Vec<&str> = location.split('/').collect();
            if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(err(
                    format!("{location:?} is not [<cluster>/]<service>"),
                    "write ecs:my-cluster/my-service",
                ));
            }
        }
        Ok(TargetSpec { raw: raw.to_string(), kind, location: location.to_string(), options })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        let s: TargetSpec = "secretsmanager:prod/app/aws".parse().unwrap();
        assert_eq!((s.kind, s.location.as_str()), (TargetKind::SecretsManager, "prod/app/aws"));
        let s: TargetSpec = "ecs:prod/api?container=web".parse().unwrap();
        assert_eq!((s.kind, s.location.as_str(), s.option("container")), (TargetKind::Ecs, "prod/api", Some("web")));
        let s: TargetSpec = "env:/srv/app/.env?id-field=KEY_ID".parse().unwrap();
        assert_eq!(s.id_fields(), vec!["KEY_ID".to_string()]);
        assert_eq!(s.secret_fields(), vec!["AWS_SECRET_ACCESS_KEY".to_string(), "aws_secret_access_key".to_string()]);
    }

    #[test]
    fn rejects_bad_specs_with_a_fix() {
        for bad in ["", "nokind", "s3:bucket", "env:", "ecs:a/b/c", "ecs:/svc", "env:x?color=red", "env:x?id-field"] {
            let e = bad.parse::<TargetSpec>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
            assert!(!e.fix.is_empty());
        }
    }
}
