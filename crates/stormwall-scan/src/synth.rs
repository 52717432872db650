//! Synthetic corpus generator: made-up credentials of every supported format (valid
//! checksums, never real), planted in realistic files of several languages, configs,
//! notebooks, minified bundles, archives and git histories, next to look-alikes that must
//! not match (UUIDs, digests, placeholders, near-misses with a wrong checksum).
//!
//! Deterministic for a seed, so a test can measure recall and precision exactly and a
//! benchmark can plant the same keys into a corpus of real source for every tool.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::validate::{azure_cask_checksum, base62_fixed, encode_base64, hex8};

const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const URLSAFE: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-";
const HEX: &[u8] = b"0123456789abcdef";
const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A small deterministic generator (SplitMix64): corpus content must not depend on the OS.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// `n` characters drawn from `alphabet`.
    pub fn string(&mut self, n: usize, alphabet: &[u8]) -> String {
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
}

/// One credential format the generator can make.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    /// Rule that must find it.
    pub rule: &'static str,
    /// The environment variable it is usually kept in (also its context, where the rule
    /// needs one).
    pub var: &'static str,
    make: fn(&mut Rng) -> String,
}

/// Every format, one or more per rule.
pub const FORMATS: &[Format] = &[
    Format {
        rule: "stormwall-api-key",
        var: "STORMWALL_API_KEY",
        make: stormwall_key,
    },
    Format {
        rule: "openai-project-key",
        var: "OPENAI_API_KEY",
        make: |r| openai(r, "sk-proj-"),
    },
    Format {
        rule: "openai-service-account-key",
        var: "OPENAI_API_KEY",
        make: |r| openai(r, "sk-svcacct-"),
    },
    Format {
        rule: "openai-admin-key",
        var: "OPENAI_ADMIN_KEY",
        make: |r| openai(r, "sk-admin-"),
    },
    Format {
        rule: "openai-user-key",
        var: "OPENAI_API_KEY",
        make: |r| format!("sk-{}T3BlbkFJ{}", r.string(20, ALNUM), r.string(20, ALNUM)),
    },
    Format {
        rule: "azure-ai-services-key",
        var: "AZURE_OPENAI_API_KEY",
        make: azure_key,
    },
    Format {
        rule: "azure-ai-services-key",
        var: "AZURE_AI_FOUNDRY_KEY",
        make: azure_key,
    },
    Format {
        rule: "azure-openai-legacy-key",
        var: "AZURE_OPENAI_API_KEY",
        make: |r| r.string(32, HEX),
    },
    Format {
        rule: "anthropic-api-key",
        var: "ANTHROPIC_API_KEY",
        make: |r| format!("sk-ant-api03-{}AA", r.string(93, URLSAFE)),
    },
    Format {
        rule: "anthropic-admin-key",
        var: "ANTHROPIC_ADMIN_KEY",
        make: |r| format!("sk-ant-admin01-{}AA", r.string(93, URLSAFE)),
    },
    Format {
        rule: "google-api-key",
        var: "GEMINI_API_KEY",
        make: |r| format!("AIza{}", r.string(35, URLSAFE)),
    },
    Format {
        rule: "aws-access-key-id",
        var: "AWS_ACCESS_KEY_ID",
        make: |r| format!("AKIA{}", r.string(16, BASE32)),
    },
    Format {
        rule: "aws-secret-access-key",
        var: "AWS_SECRET_ACCESS_KEY",
        make: |r| r.string(40, BASE64),
    },
    Format {
        rule: "aws-bedrock-api-key",
        var: "AWS_BEARER_TOKEN_BEDROCK",
        make: bedrock_long,
    },
    Format {
        rule: "aws-bedrock-short-term-key",
        var: "AWS_BEARER_TOKEN_BEDROCK",
        make: bedrock_short,
    },
    Format {
        rule: "huggingface-token",
        var: "HF_TOKEN",
        make: |r| format!("hf_{}", r.string(34, LETTERS)),
    },
    Format {
        rule: "groq-api-key",
        var: "GROQ_API_KEY",
        make: |r| format!("gsk_{}", r.string(52, ALNUM)),
    },
    Format {
        rule: "replicate-api-token",
        var: "REPLICATE_API_TOKEN",
        make: |r| format!("r8_{}", r.string(37, ALNUM)),
    },
    Format {
        rule: "openrouter-api-key",
        var: "OPENROUTER_API_KEY",
        make: |r| format!("sk-or-v1-{}", r.string(64, HEX)),
    },
    Format {
        rule: "perplexity-api-key",
        var: "PERPLEXITY_API_KEY",
        make: |r| format!("pplx-{}", r.string(48, ALNUM)),
    },
    Format {
        rule: "xai-api-key",
        var: "XAI_API_KEY",
        make: |r| format!("xai-{}", r.string(80, ALNUM)),
    },
    Format {
        rule: "deepseek-api-key",
        var: "DEEPSEEK_API_KEY",
        make: |r| format!("sk-{}", r.string(32, HEX)),
    },
    Format {
        rule: "mistral-api-key",
        var: "MISTRAL_API_KEY",
        make: |r| r.string(32, ALNUM),
    },
    Format {
        rule: "cohere-api-key",
        var: "COHERE_API_KEY",
        make: |r| r.string(40, ALNUM),
    },
    Format {
        rule: "together-api-key",
        var: "TOGETHER_API_KEY",
        make: |r| format!("tgp_v1_{}", r.string(43, URLSAFE)),
    },
    Format {
        rule: "together-legacy-api-key",
        var: "TOGETHER_API_KEY",
        make: |r| r.string(64, HEX),
    },
    Format {
        rule: "fireworks-api-key",
        var: "FIREWORKS_API_KEY",
        make: |r| format!("fw_{}", r.string(24, ALNUM)),
    },
    Format {
        rule: "elevenlabs-api-key",
        var: "ELEVENLABS_API_KEY",
        make: |r| format!("sk_{}", r.string(48, HEX)),
    },
    Format {
        rule: "elevenlabs-legacy-api-key",
        var: "ELEVENLABS_API_KEY",
        make: |r| r.string(32, HEX),
    },
    Format {
        rule: "stability-api-key",
        var: "STABILITY_API_KEY",
        make: |r| format!("sk-{}", r.string(48, ALNUM)),
    },
    Format {
        rule: "langsmith-api-key",
        var: "LANGSMITH_API_KEY",
        make: |r| format!("lsv2_pt_{}_{}", r.string(32, HEX), r.string(10, HEX)),
    },
    Format {
        rule: "langsmith-api-key",
        var: "LANGCHAIN_API_KEY",
        make: |r| format!("lsv2_sk_{}_{}", r.string(32, HEX), r.string(10, HEX)),
    },
    Format {
        rule: "cloudflare-api-token",
        var: "CLOUDFLARE_API_TOKEN",
        make: |r| cloudflare(r, "cfut_"),
    },
    Format {
        rule: "cloudflare-api-token",
        var: "CLOUDFLARE_ACCOUNT_TOKEN",
        make: |r| cloudflare(r, "cfat_"),
    },
    Format {
        rule: "cloudflare-api-token",
        var: "CF_GLOBAL_KEY",
        make: |r| cloudflare(r, "cfk_"),
    },
    Format {
        rule: "cloudflare-legacy-api-token",
        var: "CLOUDFLARE_API_TOKEN",
        make: |r| r.string(40, URLSAFE),
    },
    Format {
        rule: "github-token",
        var: "GITHUB_TOKEN",
        make: |r| github(r, "ghp_"),
    },
    Format {
        rule: "github-token",
        var: "GH_MODELS_TOKEN",
        make: |r| github(r, "gho_"),
    },
    Format {
        rule: "github-fine-grained-token",
        var: "GITHUB_TOKEN",
        make: |r| format!("github_pat_{}_{}", r.string(22, ALNUM), r.string(59, ALNUM)),
    },
];

impl Format {
    /// A fresh credential of this format.
    pub fn make(&self, rng: &mut Rng) -> String {
        // Real credentials are random; a draw that happens to look like a placeholder
        // (a long run of one character) is redrawn so expectations stay exact.
        loop {
            let k = (self.make)(rng);
            if !crate::matcher::looks_like_placeholder(k.as_bytes()) {
                return k;
            }
        }
    }
}

fn stormwall_key(r: &mut Rng) -> String {
    let head = format!("swk_{}_{}", r.string(12, ALNUM), r.string(32, ALNUM));
    let check = base62_fixed::<6>(crc32fast::hash(head.as_bytes()));
    head + &String::from_utf8_lossy(&check)
}

fn openai(r: &mut Rng, prefix: &str) -> String {
    format!(
        "{prefix}{}T3BlbkFJ{}",
        r.string(74, URLSAFE),
        r.string(74, URLSAFE)
    )
}

fn azure_key(r: &mut Rng) -> String {
    // Azure only issues keys whose checksum characters are alphanumeric (its published
    // pattern has no `+` or `/` there), so draws that encode otherwise are redrawn.
    loop {
        let key = azure_key_candidate(r);
        if key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return key;
        }
    }
}

fn azure_key_candidate(r: &mut Rng) -> String {
    let head = format!(
        "{}JQQJ99B{}AC{}J3w3AAA{}ACOG",
        r.string(52, ALNUM),
        r.string(1, b"ABCDEFGHIJKL"),
        r.string(6, ALNUM),
        r.string(1, b"ABCDEFGL"),
    );
    let check = azure_cask_checksum(head.as_bytes()).unwrap_or([b'A'; 4]);
    head + &String::from_utf8_lossy(&check)
}

fn bedrock_long(r: &mut Rng) -> String {
    let account: String = r.string(12, b"0123456789");
    let mut payload = format!(
        "BedrockAPIKey-{}-at-{account}:{}",
        r.string(4, ALNUM),
        r.string(44, BASE64)
    );
    while payload.len() % 3 != 0 {
        payload.push_str(&r.string(1, ALNUM));
    }
    format!("ABSK{}", encode_base64(payload.as_bytes()))
}

fn bedrock_short(r: &mut Rng) -> String {
    let mut q = format!(
        "bedrock.amazonaws.com/?Action=CallWithBearerToken&X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=ASIA{}%2F20261128%2Fus-east-1%2Fbedrock%2Faws4_request\
         &X-Amz-Date=20261128T120000Z&X-Amz-Expires=43200&X-Amz-Security-Token={}\
         &X-Amz-Signature={}&X-Amz-SignedHeaders=host&Version=1",
        r.string(16, BASE32),
        r.string(300, ALNUM),
        r.string(64, HEX),
    );
    while q.len() % 3 != 0 {
        q.push('1');
    }
    format!("bedrock-api-key-{}", encode_base64(q.as_bytes()))
}

fn cloudflare(r: &mut Rng, prefix: &str) -> String {
    let body = r.string(40, ALNUM);
    let check = hex8(crc32fast::hash(body.as_bytes()));
    format!("{prefix}{body}{}", String::from_utf8_lossy(&check))
}

fn github(r: &mut Rng, prefix: &str) -> String {
    let body = r.string(30, ALNUM);
    let check = base62_fixed::<6>(crc32fast::hash(body.as_bytes()));
    format!("{prefix}{body}{}", String::from_utf8_lossy(&check))
}

/// A credential planted in the corpus, and where the scanner must report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planted {
    /// Path relative to the corpus root, as the scanner reports it.
    pub path: String,
    /// 1-based line.
    pub line: u64,
    /// Rule that must report it.
    pub rule: String,
    /// The made-up credential (kept out of the manifest file).
    #[serde(skip)]
    pub secret: String,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    /// Every planted credential.
    pub planted: Vec<Planted>,
    /// Look-alikes written (none must be reported).
    pub decoys: usize,
    /// Files written (archive members and git blobs not counted).
    pub files: usize,
}

/// Generator settings.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// How many times each format is planted (each time in another file type).
    pub rounds: usize,
    /// Also build a git repository with history, deleted files and an unreachable packed blob.
    pub git: bool,
    /// Also build zip and tar.gz archives with credentials inside.
    pub archives: bool,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            seed: 0x5707_3a11,
            rounds: 3,
            git: true,
            archives: true,
        }
    }
}

/// A file type a credential can be planted in: extension and a template with `{VAR}`,
/// `{var}` (lower case) and `{KEY}`.
struct Template {
    name: &'static str,
    ext: &'static str,
    text: &'static str,
}

const TEMPLATES: &[Template] = &[
    Template {
        name: "settings",
        ext: "env",
        text: "# local settings, do not commit\nDEBUG=true\nREQUEST_ID=9b2f1c4e-7a35-4d8e-b1f0-3c6d2a9e8f41\n{VAR}={KEY}\nLOG_LEVEL=info\n",
    },
    Template {
        name: "client",
        ext: "py",
        text: "import os\n\nfrom app import build_client\n\n# TODO move to the vault\n{VAR} = \"{KEY}\"\n\n\ndef client():\n    return build_client(key={VAR}, timeout=30)\n",
    },
    Template {
        name: "config",
        ext: "js",
        text: "'use strict';\n\nconst config = {\n  region: 'us-east-1',\n  retries: 3,\n  {VAR}: '{KEY}',\n};\n\nmodule.exports = config;\n",
    },
    Template {
        name: "secrets",
        ext: "ts",
        text: "// generated by setup script\nexport const timeoutMs = 30_000;\nexport const {VAR}: string = \"{KEY}\";\n",
    },
    Template {
        name: "main",
        ext: "go",
        text: "package main\n\nimport \"os\"\n\nfunc init() {\n\tos.Setenv(\"{VAR}\", \"{KEY}\")\n}\n\nfunc main() {}\n",
    },
    Template {
        name: "keys",
        ext: "rs",
        text: "//! Development credentials.\n\n/// Used by the integration demo.\npub const {VAR}: &str = \"{KEY}\";\n",
    },
    Template {
        name: "Config",
        ext: "java",
        text: "package com.example.demo;\n\npublic final class Config {\n    private Config() {}\n\n    static final String {VAR} = \"{KEY}\";\n}\n",
    },
    Template {
        name: "docker-compose",
        ext: "yml",
        text: "services:\n  api:\n    image: example/api:1.4\n    environment:\n      PORT: \"8080\"\n      {VAR}: {KEY}\n",
    },
    Template {
        name: "appsettings",
        ext: "json",
        text: "{\n  \"name\": \"demo\",\n  \"version\": \"1.0.0\",\n  \"{VAR}\": \"{KEY}\"\n}\n",
    },
    Template {
        name: "pyproject",
        ext: "toml",
        text: "[tool.demo]\nname = \"demo\"\n\n[tool.demo.secrets]\n{var} = \"{KEY}\"\n",
    },
    Template {
        name: "deploy",
        ext: "sh",
        text: "#!/bin/sh\nset -eu\nexport {VAR}=\"{KEY}\"\nexec python -m app\n",
    },
    Template {
        name: "Dockerfile",
        ext: "dockerfile",
        text: "FROM python:3.12-slim\nWORKDIR /app\nENV {VAR}={KEY}\nCMD [\"python\", \"-m\", \"app\"]\n",
    },
    Template {
        name: "notebook",
        ext: "ipynb",
        text: "{\n \"cells\": [\n  {\n   \"cell_type\": \"code\",\n   \"execution_count\": 1,\n   \"metadata\": {},\n   \"outputs\": [],\n   \"source\": [\n    \"import os\\n\",\n    \"os.environ[\\\"{VAR}\\\"] = \\\"{KEY}\\\"\\n\"\n   ]\n  }\n ],\n \"metadata\": {},\n \"nbformat\": 4,\n \"nbformat_minor\": 5\n}\n",
    },
    Template {
        name: "bundle.min",
        ext: "js",
        text: "!function(e){var t={};function n(r){if(t[r])return t[r].exports}{FILLER}n.p=\"\";var c={env:{{VAR}:\"{KEY}\",mode:\"production\"}};e.cfg=c}(window);\n",
    },
];

fn render(t: &Template, var: &str, key: &str, rng: &mut Rng) -> String {
    let filler = if t.text.contains("{FILLER}") {
        minified_filler(rng, 6000)
    } else {
        String::new()
    };
    t.text
        .replace("{FILLER}", &filler)
        .replace("{VAR}", var)
        .replace("{var}", &var.to_ascii_lowercase())
        .replace("{KEY}", key)
}

/// Minified-looking code on one line, with base64 and hex noise that must not match.
fn minified_filler(rng: &mut Rng, len: usize) -> String {
    let mut s = String::with_capacity(len + 200);
    while s.len() < len {
        let a = rng.string(2, LETTERS);
        let _ = match rng.below(4) {
            0 => write!(
                s,
                "var {a}=function(o){{return o&&o.__esModule?o:{{default:o}}}};"
            ),
            1 => write!(
                s,
                "{a}.src=\"data:image/png;base64,{}\";",
                rng.string(120, BASE64)
            ),
            2 => write!(s, "{a}.hash=\"{}\";", rng.string(40, HEX)),
            _ => write!(s, "{a}.id=\"{}\";", uuid(rng)),
        };
    }
    s
}

fn uuid(rng: &mut Rng) -> String {
    let h = rng.string(32, HEX);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..]
    )
}

/// Look-alikes: each must produce no finding.
fn decoy_files(rng: &mut Rng) -> Vec<(String, String)> {
    let azure_bad = {
        let mut k = azure_key(rng);
        k.pop();
        k.push(if k.ends_with('A') { 'B' } else { 'A' });
        k
    };
    let github_bad = {
        let mut k = github(rng, "ghp_");
        k.pop();
        k.push('0');
        k.replace_range(4..5, "Z");
        k
    };
    let cloudflare_bad = format!("cfut_{}{}", rng.string(40, ALNUM), rng.string(8, HEX));
    let stormwall_bad = format!("swk_{}_{}", rng.string(12, ALNUM), rng.string(38, ALNUM));
    let sha256 = rng.string(64, HEX);
    let sha1 = rng.string(40, HEX);
    let md5 = rng.string(32, HEX);
    let u = uuid(rng);
    let u2 = uuid(rng);
    let integrity = rng.string(86, BASE64);
    let session = rng.string(40, ALNUM);
    let plain32 = rng.string(32, HEX);
    vec![
        (
            "decoys/placeholders.env".to_owned(),
            "OPENAI_API_KEY=sk-proj-...\nOPENAI_API_KEY=sk-your-key-here\nANTHROPIC_API_KEY=<your-anthropic-key>\n\
             AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n\
             GEMINI_API_KEY=AIzaSyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\nHF_TOKEN=hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n\
             GROQ_API_KEY=${GROQ_API_KEY}\nMISTRAL_API_KEY=your_mistral_api_key_goes_here\n\
             AZURE_OPENAI_API_KEY=00000000000000000000000000000000\nAZURE_OPENAI_ENDPOINT=https://contoso.openai.azure.com/\n\
             COHERE_API_KEY=abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN\n"
                .to_owned(),
        ),
        (
            "decoys/near-misses.txt".to_owned(),
            format!(
                "# wrong checksums and truncations\nazure_key = \"{azure_bad}\"\ngithub = \"{github_bad}\"\n\
                 cloudflare = \"{cloudflare_bad}\"\nstormwall = \"{stormwall_bad}\"\n\
                 short = \"sk-ant-api03-{}\"\nproj = \"sk-proj-{}\"\n",
                rng.string(40, URLSAFE),
                rng.string(40, URLSAFE)
            ),
        ),
        (
            "decoys/digests.lock".to_owned(),
            format!(
                "[[package]]\nname = \"cloudflare-sdk\"\nversion = \"0.4.2\"\nsource = \"git+https://github.com/example/cloudflare-sdk?rev={sha1}#{sha1}\"\n\
                 checksum = \"{sha256}\"\n\n\"integrity\": \"sha512-{integrity}==\"\nmd5 = \"{md5}\"\n"
            ),
        ),
        (
            "decoys/ids.py".to_owned(),
            format!(
                "AZURE_OPENAI_ENDPOINT = \"https://contoso-eastus.openai.azure.com/\"\n\
                 DEPLOYMENT_ID = \"{plain32}\"\nrequest_id = \"{u}\"\ntrace = \"{u2}\"\n\
                 session_token = \"{session}\"\n\nfor task in tasks: run_task(task-1, desk-2)\n\
                 ASIAN_MARKETS = [\"tokyo\"]\nfw_version = load_fw_image()\nself.hf_model_name = \"bert\"\n"
            ),
        ),
        (
            "decoys/README.md".to_owned(),
            "# Setup\n\nSet `OPENAI_API_KEY` to your key, for example `sk-proj-abc123`.\n\
             Deepseek keys look like `sk-` followed by 32 hex characters.\n\
             Stability AI keys start with `sk-`; paste yours into `.env`.\n"
                .to_owned(),
        ),
        (
            "decoys/minified.min.js".to_owned(),
            format!("{}\n", minified_filler(rng, 20_000)),
        ),
    ]
}

fn plant_one(
    root: &Path,
    rel_dir: &str,
    format: &Format,
    template: &Template,
    index: usize,
    rng: &mut Rng,
    out: &mut Corpus,
) -> io::Result<()> {
    let key = format.make(rng);
    let text = render(template, format.var, &key, rng);
    let file = if template.ext == "dockerfile" {
        format!("{}-{index}/Dockerfile", template.name)
    } else {
        format!("{}-{index}.{}", template.name, template.ext)
    };
    let rel = format!("{rel_dir}/{file}");
    write_file(&root.join(&rel), text.as_bytes())?;
    out.files += 1;
    out.planted.push(Planted {
        line: line_of(&text, &key),
        path: rel,
        rule: format.rule.to_owned(),
        secret: key,
    });
    Ok(())
}

fn line_of(text: &str, needle: &str) -> u64 {
    text.find(needle)
        .map_or(0, |i| text[..i].matches('\n').count() as u64 + 1)
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes)
}

/// Writes a corpus under `root` (which should be empty) and returns what was planted.
pub fn generate(root: &Path, options: &SynthOptions) -> io::Result<Corpus> {
    let mut rng = Rng::new(options.seed);
    let mut corpus = Corpus::default();
    let mut n = 0usize;
    for round in 0..options.rounds {
        for (i, format) in FORMATS.iter().enumerate() {
            let template = &TEMPLATES[(i + round * 5) % TEMPLATES.len()];
            let dir = format!("src/{}", format.rule);
            plant_one(root, &dir, format, template, n, &mut rng, &mut corpus)?;
            n += 1;
        }
    }
    for (path, text) in decoy_files(&mut rng) {
        write_file(&root.join(&path), text.as_bytes())?;
        corpus.files += 1;
        corpus.decoys += 1;
    }
    // A binary file with a key inside is skipped, by design, and so expects nothing.
    let mut binary = vec![0u8, 1, 2, 3];
    binary.extend_from_slice(FORMATS[1].make(&mut rng).as_bytes());
    write_file(&root.join("decoys/blob.bin"), &binary)?;
    corpus.files += 1;
    if options.archives {
        archives(root, &mut rng, &mut corpus)?;
    }
    if options.git {
        git_history(&root.join("repo"), "repo", &mut rng, &mut corpus)?;
    }
    corpus
        .planted
        .sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    Ok(corpus)
}

/// Plants `count` credentials (formats in turn, templates in turn) as new files under
/// `root/dir`, for benchmarks over an existing tree of real source.
pub fn plant(root: &Path, dir: &str, count: usize, seed: u64) -> io::Result<Vec<Planted>> {
    let mut rng = Rng::new(seed);
    let mut corpus = Corpus::default();
    for i in 0..count {
        let format = &FORMATS[i % FORMATS.len()];
        let template = &TEMPLATES[(i / FORMATS.len() + i) % TEMPLATES.len()];
        plant_one(root, dir, format, template, i, &mut rng, &mut corpus)?;
    }
    Ok(corpus.planted)
}

fn archives(root: &Path, rng: &mut Rng, corpus: &mut Corpus) -> io::Result<()> {
    use zip::write::SimpleFileOptions;
    let groq = FORMATS.iter().find(|f| f.rule == "groq-api-key");
    let anthropic = FORMATS.iter().find(|f| f.rule == "anthropic-api-key");
    let (Some(groq), Some(anthropic)) = (groq, anthropic) else {
        return Ok(());
    };
    let env = &TEMPLATES[0];

    // A zip with a credential in a member and a tarball nested inside it.
    let zip_key = groq.make(rng);
    let zip_text = render(env, groq.var, &zip_key, rng);
    let inner_key = anthropic.make(rng);
    let inner_text = render(env, anthropic.var, &inner_key, rng);
    let inner_tgz = tar_gz(&[("app/.env", inner_text.as_bytes())])?;
    let path = root.join("archives/release.zip");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path)?);
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("config/.env", opts)
        .map_err(io::Error::other)?;
    zip.write_all(zip_text.as_bytes())?;
    zip.start_file("vendor/app.tar.gz", opts)
        .map_err(io::Error::other)?;
    zip.write_all(&inner_tgz)?;
    zip.finish().map_err(io::Error::other)?;
    corpus.files += 1;
    corpus.planted.push(Planted {
        path: "archives/release.zip!config/.env".to_owned(),
        line: line_of(&zip_text, &zip_key),
        rule: groq.rule.to_owned(),
        secret: zip_key,
    });
    corpus.planted.push(Planted {
        path: "archives/release.zip!vendor/app.tar.gz!app/.env".to_owned(),
        line: line_of(&inner_text, &inner_key),
        rule: anthropic.rule.to_owned(),
        secret: inner_key,
    });

    // A plain gzip file.
    let gz_key = groq.make(rng);
    let gz_text = render(&TEMPLATES[1], groq.var, &gz_key, rng);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(gz_text.as_bytes())?;
    write_file(&root.join("archives/settings.py.gz"), &enc.finish()?)?;
    corpus.files += 1;
    corpus.planted.push(Planted {
        path: "archives/settings.py.gz!settings.py".to_owned(),
        line: line_of(&gz_text, &gz_key),
        rule: groq.rule.to_owned(),
        secret: gz_key,
    });
    Ok(())
}

fn tar_gz(files: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(enc);
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        tar.append_data(&mut header, name, *bytes)?;
    }
    tar.into_inner()?.finish()
}

fn git(repo: &Path, args: &[&str], date: &str) -> io::Result<String> {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Avery Example",
            "-c",
            "user.email=avery@example.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", repo)
        // Run inside a hook or another repository's environment, these would redirect
        // every command away from the corpus repository.
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A repository whose history holds credentials that are gone from the working tree: one
/// removed by a later commit, one in a deleted file, one only in an unreachable packed blob,
/// and one still present (reported once, from the working tree, with its commit).
fn git_history(repo: &Path, rel: &str, rng: &mut Rng, corpus: &mut Corpus) -> io::Result<()> {
    std::fs::create_dir_all(repo)?;
    let by_rule = |id: &str| FORMATS.iter().find(|f| f.rule == id);
    let (Some(a), Some(b), Some(c), Some(d)) = (
        by_rule("openai-project-key"),
        by_rule("xai-api-key"),
        by_rule("stormwall-api-key"),
        by_rule("azure-ai-services-key"),
    ) else {
        return Ok(());
    };
    git(repo, &["init", "-q"], "1700000000 +0000")?;

    // Commit 1: config.py with key A, secrets.env with key B, app.py with key C.
    let key_a = a.make(rng);
    let config1 = render(&TEMPLATES[1], a.var, &key_a, rng);
    write_file(&repo.join("config.py"), config1.as_bytes())?;
    let key_b = b.make(rng);
    let secrets = render(&TEMPLATES[0], b.var, &key_b, rng);
    write_file(&repo.join("old/secrets.env"), secrets.as_bytes())?;
    let key_c = c.make(rng);
    let app = render(&TEMPLATES[4], c.var, &key_c, rng);
    write_file(&repo.join("app/main.go"), app.as_bytes())?;
    git(repo, &["add", "-A"], "1700000000 +0000")?;
    git(
        repo,
        &["commit", "-q", "-m", "initial import"],
        "1700000000 +0000",
    )?;

    // Commit 2: key A replaced by an environment lookup; the secrets file deleted.
    let config2 = "import os\n\nOPENAI_API_KEY = os.environ[\"OPENAI_API_KEY\"]\n";
    write_file(&repo.join("config.py"), config2.as_bytes())?;
    std::fs::remove_file(repo.join("old/secrets.env"))?;
    git(repo, &["add", "-A"], "1700003600 +0000")?;
    git(
        repo,
        &["commit", "-q", "-m", "read keys from the environment"],
        "1700003600 +0000",
    )?;

    // A blob no commit reaches, packed: written to the object store, then repacked keeping
    // unreachable objects.
    let key_d = d.make(rng);
    let dangling = render(&TEMPLATES[7], d.var, &key_d, rng);
    write_file(&repo.join("scratch.yml"), dangling.as_bytes())?;
    let blob = git(
        repo,
        &["hash-object", "-w", "scratch.yml"],
        "1700003600 +0000",
    )?;
    std::fs::remove_file(repo.join("scratch.yml"))?;
    git(
        repo,
        &["repack", "-a", "-d", "-q", "--keep-unreachable"],
        "1700003600 +0000",
    )?;

    let commit1 = git(
        repo,
        &["rev-list", "--max-parents=0", "HEAD"],
        "1700000000 +0000",
    )?;
    let _ = commit1;
    for (path, text, key, rule) in [
        (format!("{rel}/config.py"), &config1, key_a, a.rule),
        (format!("{rel}/old/secrets.env"), &secrets, key_b, b.rule),
        (format!("{rel}/app/main.go"), &app, key_c, c.rule),
        (format!("{rel}/.git/blob/{blob}"), &dangling, key_d, d.rule),
    ] {
        corpus.planted.push(Planted {
            line: line_of(text, &key),
            path,
            rule: rule.to_owned(),
            secret: key,
        });
    }
    corpus.files += 2;
    Ok(())
}

/// Writes the manifest (no secrets) as JSON lines.
pub fn write_manifest(path: &Path, planted: &[Planted]) -> io::Result<()> {
    let mut s = String::new();
    for p in planted {
        s.push_str(&serde_json::to_string(p).map_err(io::Error::other)?);
        s.push('\n');
    }
    write_file(path, s.as_bytes())
}

/// Default corpus directory name used by the benchmark.
pub fn default_dir(base: &Path) -> PathBuf {
    base.join("synthetic")
}
