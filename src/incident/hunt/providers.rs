//! OIDC and SAML identity providers the attacker created: whoever controls one can assume the
//! roles that trust it.

use super::event::{req, resp};
use super::{Hunter, Look, look};
use crate::incident::model::{Action, Severity, TimelineEvent, Undo};

impl Hunter<'_> {
    pub(super) async fn identity_provider(&mut self, e: &TimelineEvent) {
        let oidc = e.event_name == "CreateOpenIDConnectProvider";
        let arn = if oidc { resp(e, &["openIDConnectProviderArn"]) } else { resp(e, &["sAMLProviderArn"]) };
        let Some(arn) = arn.map(str::to_string) else { return };
        let r = if oidc {
            look(self.iam.get_open_id_connect_provider().open_id_connect_provider_arn(&arn).send().await, &arn)
                .map(|_| ())
        } else {
            look(self.iam.get_saml_provider().saml_provider_arn(&arn).send().await, &arn).map(|_| ())
        };
        let present = match r {
            Look::Present(()) => Some(true),
            Look::Absent => Some(false),
            Look::Unknown(why) => {
                self.note(why);
                None
            }
        };
        let f = self.finding(
            "identity_provider",
            Severity::High,
            format!("attacker created identity provider {arn}"),
            arn.clone(),
            present,
            vec![e.event_id.clone()],
            "roles trusting it can be assumed by whoever controls the provider".into(),
        );
        if present != Some(true) {
            return;
        }
        let (action, recreate) = if oidc {
            let url = req(e, "url").unwrap_or("?");
            (
                Action::DeleteOpenIdConnectProvider { arn: arn.clone() },
                format!("recreate it with `aws iam create-open-id-connect-provider --url {url}` and its client ids"),
            )
        } else {
            (Action::DeleteSamlProvider { arn: arn.clone() }, "recreate it from the IdP's metadata document".into())
        };
        self.act(&f, format!("delete identity provider {arn}"), action, Undo::None { reason: recreate });
    }
}
