//! The user's other access keys, recorded before the cutover: in incident mode rekey deletes no
//! key (an Inactive second key may be the attacker's, or what an earlier responder left), so the
//! report keeps what is known of it whether or not it blocks the cutover.

use super::model::KeyMetadata;
use crate::aws::error_text as describe;

/// Every access key of `user` but `leaked`, with its creation date, last use and the user's tags
/// keyed by its id. Problems reading one detail are noted in the detail itself.
pub async fn other_keys(iam: &aws_sdk_iam::Client, user: &str, leaked: &str) -> Result<Vec<KeyMetadata>, String> {
    let listed = iam
        .list_access_keys()
        .user_name(user)
        .send()
        .await
        .map_err(|e| format!("ListAccessKeys {user}: {}", describe(&e)))?;
    let tags = iam.list_user_tags().user_name(user).send().await.map(|t| t.tags().to_vec()).unwrap_or_default();
    let mut out = Vec::new();
    for k in listed.access_key_metadata() {
        let Some(id) = k.access_key_id().filter(|id| *id != leaked) else { continue };
        let mut m = KeyMetadata {
            access_key_id: id.to_string(),
            status: k.status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            created: k
                .create_date()
                .and_then(|d| std::time::SystemTime::try_from(*d).ok())
                .map(rekey_trail::time::format),
            tags: tags.iter().filter(|t| t.key() == id).map(|t| (t.key().to_string(), t.value().to_string())).collect(),
            ..KeyMetadata::default()
        };
        match iam.get_access_key_last_used().access_key_id(id).send().await {
            Ok(u) => {
                if let Some(u) = u.access_key_last_used() {
                    m.last_used = u
                        .last_used_date()
                        .and_then(|d| std::time::SystemTime::try_from(*d).ok())
                        .map(rekey_trail::time::format);
                    m.last_used_service = Some(u.service_name().to_string()).filter(|s| !s.is_empty());
                    m.last_used_region = Some(u.region().to_string()).filter(|s| !s.is_empty());
                }
            }
            Err(e) => m.last_used = Some(format!("unknown: {}", describe(&e))),
        }
        out.push(m);
    }
    Ok(out)
}
