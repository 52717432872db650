//! Cloud-log vocabulary: the principal a cloud record names (the credential that plays the
//! role of a gateway key), the cloud context a parsed [`UsageEvent`](crate::UsageEvent)
//! carries, and [`ControlEvent`], the management call (key listing, logging and guardrail
//! changes, model enablement) that has no data-plane counterpart.
//!
//! One model, extended: a cloud data-plane call is an ordinary `UsageEvent` with a `cloud`
//! context; a management call is a `ControlEvent` with the same context.

use std::net::IpAddr;

use time::OffsetDateTime;

use crate::key::KeyId;
use crate::timefmt::rfc3339;

/// The cloud (or API provider) a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloudProvider {
    /// Microsoft Azure (Azure OpenAI / AI Foundry, API Management, ARM).
    Azure,
    /// Amazon Web Services (Bedrock, CloudTrail).
    Aws,
    /// OpenAI's own platform (organisation audit log, usage API).
    Openai,
    /// Google Cloud (Vertex AI audit logs).
    Gcp,
}

impl CloudProvider {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CloudProvider::Azure => "azure",
            CloudProvider::Aws => "aws",
            CloudProvider::Openai => "openai",
            CloudProvider::Gcp => "gcp",
        }
    }
}

/// What kind of credential a principal is; decides posture findings (E4) and the command
/// that revokes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// AWS long-lived IAM user access key (`AKIA…`).
    AwsLongTermKey,
    /// AWS temporary credentials (`ASIA…`): an assumed role or federated session.
    AwsSessionKey,
    /// Amazon Bedrock API key (bearer token; `BedrockAPIKey-*` IAM user when long-term).
    AwsBedrockApiKey,
    /// AWS principal seen without an access key id (service, console with no key logged).
    AwsPrincipal,
    /// Azure resource key (`api-key`, local auth); key1 and key2 are indistinguishable in logs.
    AzureResourceKey,
    /// Azure Entra ID identity (user, service principal, managed identity).
    AzureEntraIdentity,
    /// API Management subscription key.
    AzureApimSubscription,
    /// OpenAI project or user API key (`key_…` id).
    OpenaiApiKey,
    /// OpenAI console session (a person logged in).
    OpenaiSession,
    /// Google service-account key (a downloaded JSON key).
    GcpServiceAccountKey,
    /// Google service account or user without a key (attached identity, OAuth).
    GcpPrincipal,
}

impl CredentialKind {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::AwsLongTermKey => "aws_long_term_key",
            CredentialKind::AwsSessionKey => "aws_session_key",
            CredentialKind::AwsBedrockApiKey => "aws_bedrock_api_key",
            CredentialKind::AwsPrincipal => "aws_principal",
            CredentialKind::AzureResourceKey => "azure_resource_key",
            CredentialKind::AzureEntraIdentity => "azure_entra_identity",
            CredentialKind::AzureApimSubscription => "azure_apim_subscription",
            CredentialKind::OpenaiApiKey => "openai_api_key",
            CredentialKind::OpenaiSession => "openai_session",
            CredentialKind::GcpServiceAccountKey => "gcp_service_account_key",
            CredentialKind::GcpPrincipal => "gcp_principal",
        }
    }

    /// Whether the credential lives until someone revokes it (a finding when used for
    /// inference: E4).
    pub fn long_lived(self) -> bool {
        matches!(
            self,
            CredentialKind::AwsLongTermKey
                | CredentialKind::AwsBedrockApiKey
                | CredentialKind::AzureResourceKey
                | CredentialKind::GcpServiceAccountKey
        )
    }
}

/// The credential a cloud record was made with: what the detectors treat as "the key".
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    /// Provider.
    pub provider: CloudProvider,
    /// Kind of credential.
    pub kind: CredentialKind,
    /// Stable identifier, unique within the provider: an AWS access key id or role session
    /// ARN, an Azure resource id (+ `#key` or `#oid:<objectId>`), an OpenAI key id, a service
    /// account (+ key id). Never a secret.
    pub id: String,
    /// Account, subscription, organisation or project the credential belongs to (the tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// A person-readable name (IAM user or role ARN, e-mail, resource name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Base62 alphabet for derived key ids.
const B62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl Principal {
    /// The 12-character key id the engine tracks this principal under: a hash of provider and
    /// id, so the same credential always maps to the same id and nothing is revealed by it.
    pub fn key_id(&self) -> KeyId {
        // Two independent 64-bit FNV-1a hashes (about 71 bits in 12 base62 characters): fast
        // on every parsed record, stable across runs and versions. Ids are not secrets.
        // Both hashes in one pass over the bytes (this runs on every parsed record).
        let (mut a, mut b) = (0xcbf2_9ce4_8422_2325_u64, 0x6c62_272e_07bb_0142_u64);
        let mut step = |byte: u8| {
            a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            b = (b ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        };
        self.provider.as_str().bytes().for_each(&mut step);
        step(0);
        self.id.bytes().for_each(&mut step);
        let mut out = [0u8; 12];
        for (i, o) in out.iter_mut().enumerate() {
            let src = if i < 6 { &mut a } else { &mut b };
            *o = B62[(*src % 62) as usize];
            *src /= 62;
        }
        KeyId::from_alphanumeric(out)
    }

    /// Short human label: `provider:id`.
    pub fn label(&self) -> String {
        let mut s = String::new();
        self.write_label(&mut s);
        s
    }

    /// Writes [`Principal::label`] into `out` (cleared first), reusing its allocation: the
    /// cloud detectors look principals up by label on every event.
    pub fn write_label(&self, out: &mut String) {
        let provider = self.provider.as_str();
        out.clear();
        out.reserve(provider.len() + 1 + self.id.len());
        out.push_str(provider);
        out.push(':');
        out.push_str(&self.id);
    }
}

/// Where a cloud event came from and who made it: carried by cloud-parsed `UsageEvent`s and
/// every `ControlEvent`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CloudContext {
    /// The credential.
    pub principal: Principal,
    /// The provider's operation name as logged (`InvokeModel`, `ChatCompletions_Create`,
    /// `MICROSOFT.COGNITIVESERVICES/ACCOUNTS/LISTKEYS/ACTION`, `api_key.created`, …).
    pub operation: String,
    /// Cloud region or location, when logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Resource acted on (Azure resource id, Bedrock model ARN, Vertex resource name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The source address was logged with its last octet masked (Azure diagnostics):
    /// `source.ip` is then the /24 network, not a host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ip_masked: bool,
    /// No source address was logged at all (`source.ip` is `0.0.0.0`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ip_missing: bool,
    /// The provider's error code (`AccessDenied`, `ValidationException`, `content_filter`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The call was authenticated with a bearer API key (CloudTrail
    /// `additionalEventData.callWithBearerToken`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bearer: bool,
}

/// A normalised management operation: the detectors reason about these, whatever the
/// provider called them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Resource keys read (Azure `listKeys`, Audit `ListKey`).
    ListKeys,
    /// Resource key regenerated.
    RegenerateKey,
    /// A credential created (IAM access key, login profile, OpenAI API key, SA key).
    CreateKey,
    /// A credential's scopes or status changed.
    UpdateKey,
    /// A credential deleted.
    DeleteKey,
    /// Invocation-logging configuration read (`GetModelInvocationLoggingConfiguration`).
    GetLoggingConfig,
    /// Invocation-logging configuration written.
    PutLoggingConfig,
    /// Invocation logging deleted, or a diagnostic setting removed.
    DeleteLogging,
    /// Bedrock use-case form submitted (`PutUseCaseForModelAccess`).
    ModelUseCase,
    /// Model agreement offers listed.
    ListAgreementOffers,
    /// Model agreement accepted (`CreateFoundationModelAgreement`).
    ModelAgreement,
    /// Model entitlement requested (`PutFoundationModelEntitlement`).
    ModelEntitlement,
    /// Model availability polled (`GetFoundationModelAvailability`).
    ModelAvailability,
    /// Guardrail created.
    GuardrailCreate,
    /// Guardrail updated (or an Azure content-filter policy written).
    GuardrailUpdate,
    /// Guardrail deleted (or an Azure content-filter policy deleted).
    GuardrailDelete,
    /// Network access loosened or ACL changed (public access, default action, IP allowlist).
    NetworkChange,
    /// Local (key) authentication switched on or off.
    LocalAuthChange,
    /// A model deployment created or changed.
    DeploymentWrite,
    /// A person logged in.
    Login,
    /// A login failed.
    LoginFailed,
    /// Anything else a known source logged (kept, never dropped).
    Other,
}

impl ControlAction {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlAction::ListKeys => "list_keys",
            ControlAction::RegenerateKey => "regenerate_key",
            ControlAction::CreateKey => "create_key",
            ControlAction::UpdateKey => "update_key",
            ControlAction::DeleteKey => "delete_key",
            ControlAction::GetLoggingConfig => "get_logging_config",
            ControlAction::PutLoggingConfig => "put_logging_config",
            ControlAction::DeleteLogging => "delete_logging",
            ControlAction::ModelUseCase => "model_use_case",
            ControlAction::ListAgreementOffers => "list_agreement_offers",
            ControlAction::ModelAgreement => "model_agreement",
            ControlAction::ModelEntitlement => "model_entitlement",
            ControlAction::ModelAvailability => "model_availability",
            ControlAction::GuardrailCreate => "guardrail_create",
            ControlAction::GuardrailUpdate => "guardrail_update",
            ControlAction::GuardrailDelete => "guardrail_delete",
            ControlAction::NetworkChange => "network_change",
            ControlAction::LocalAuthChange => "local_auth_change",
            ControlAction::DeploymentWrite => "deployment_write",
            ControlAction::Login => "login",
            ControlAction::LoginFailed => "login_failed",
            ControlAction::Other => "other",
        }
    }
}

/// One management-plane call from a cloud log: who did what to which resource, from where.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ControlEvent {
    /// When the call was made.
    #[serde(rename = "@timestamp", with = "rfc3339")]
    pub timestamp: OffsetDateTime,
    /// Event id (the provider's when it has one, else derived from the record).
    #[serde(rename = "event.id")]
    pub id: String,
    /// Log source name (`aws.cloudtrail`, `azure.activity`, …).
    #[serde(rename = "event.dataset")]
    pub dataset: String,
    /// Normalised operation.
    #[serde(rename = "event.action")]
    pub action: ControlAction,
    /// Whether the call succeeded.
    #[serde(rename = "event.outcome_success")]
    pub success: bool,
    /// Caller address, when logged.
    #[serde(rename = "source.ip", default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<IpAddr>,
    /// User agent, when logged.
    #[serde(
        rename = "user_agent.original",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub user_agent: Option<String>,
    /// Who made the call and how.
    pub cloud: CloudContext,
    /// Service the call went to (`bedrock.amazonaws.com`, `iam.amazonaws.com`,
    /// `Microsoft.CognitiveServices`, …).
    #[serde(rename = "service", default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The credential the call created or changed, when it names one (an IAM user name, an
    /// OpenAI key id). Never a secret.
    #[serde(rename = "target", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Scopes granted to a created or updated key (OpenAI `scopes`).
    #[serde(rename = "scopes", default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The change opens access (public network enabled, default action Allow, local auth
    /// re-enabled, an allowlist removed) or weakens a safety control (a filter off).
    #[serde(
        rename = "loosens",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub loosens: bool,
    /// Count the record stands for (Azure Audit records aggregate, usage buckets count).
    #[serde(rename = "count", default = "one")]
    pub count: u32,
    /// Response size in bytes, when logged.
    #[serde(
        rename = "response_bytes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub response_bytes: Option<u64>,
}

fn one() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str) -> Principal {
        Principal {
            provider: CloudProvider::Aws,
            kind: CredentialKind::AwsLongTermKey,
            id: id.into(),
            account: None,
            name: None,
        }
    }

    #[test]
    fn key_ids_are_stable_valid_and_distinct() {
        let a = p("AKIAEXAMPLE7Q2R4T6Y8").key_id();
        assert_eq!(a, p("AKIAEXAMPLE7Q2R4T6Y8").key_id());
        assert_eq!(a.as_str().len(), 12);
        // Pinned: stored alerts, saved states and operators' notes name keys by this id.
        assert_eq!(a.as_str(), "JBDrp8WhkRK8");
        assert_ne!(a, p("AKIAEXAMPLE7Q2R4T6Y9").key_id());
        let mut other = p("AKIAEXAMPLE7Q2R4T6Y8");
        other.provider = CloudProvider::Gcp;
        assert_ne!(a, other.key_id());
    }

    #[test]
    fn labels_are_provider_and_id() {
        let mut buf = String::from("left over from the last principal");
        p("AKIAEXAMPLE7Q2R4T6Y8").write_label(&mut buf);
        assert_eq!(buf, "aws:AKIAEXAMPLE7Q2R4T6Y8");
        assert_eq!(p("AKIAEXAMPLE7Q2R4T6Y8").label(), buf);
    }

    #[test]
    fn long_lived_kinds() {
        assert!(CredentialKind::AwsLongTermKey.long_lived());
        assert!(!CredentialKind::AwsSessionKey.long_lived());
        assert!(CredentialKind::AzureResourceKey.long_lived());
    }
}
