//! The storage flags every subcommand shares, written once: where the
//! replica is (`--bucket`, `--endpoint`, `--region`, `--path-style`), its
//! keys (`--encryption-key-file`, `--decryption-key-file`), and opening it.
//!
//! Why a macro: argh has no `flatten`, so a subcommand's flags must be fields
//! of its own struct, in the order `--help` lists them. [`storage_command!`]
//! writes the shared fields (help texts included) into each command's struct
//! at the places the command marks, and gives a one-shot command's struct a
//! `storage()` method returning its [`StorageFlags`]. `walsync sync`, whose
//! bucket is optional (it may come from the config file) and joined with
//! `--prefix`, takes only the S3 and key flags from the macro and builds its
//! [`StorageFlags`] itself. Every command then opens its storage through
//! [`StorageFlags::open`], so the encryption wrapping and its log line are
//! the same everywhere.

use std::sync::Arc;

use crate::error::Result;
use crate::storage::{self, S3Options, Storage};

/// Where a command's replica is and which keys read and write it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageFlags {
    /// `NAME`, `s3://NAME/prefix` or `file:///dir`.
    pub spec: String,
    /// From `--endpoint`, `--region` and `--path-style`.
    pub s3: S3Options,
    /// `--encryption-key-file` (else `$WALSYNC_ENCRYPTION_KEY`).
    pub key_file: Option<String>,
    /// `--decryption-key-file`, repeatable.
    pub decryption_files: Vec<String>,
}

impl StorageFlags {
    /// The flags as given: `path_style` is a switch, so absent means "not
    /// forced" (the S3 client then picks path style for a custom endpoint).
    pub fn new(
        spec: String,
        endpoint: Option<String>,
        region: Option<String>,
        path_style: bool,
        key_file: Option<String>,
        decryption_files: Vec<String>,
    ) -> StorageFlags {
        StorageFlags {
            spec,
            s3: S3Options {
                endpoint,
                region,
                path_style: path_style.then_some(true),
            },
            key_file,
            decryption_files,
        }
    }

    /// The store twice: as is (`raw`: lease objects) and as the pipeline
    /// sees it (`data`: encrypting when a key is configured). `daemon`: say
    /// which key is in force at info level (one-shot commands keep stderr
    /// to their one line).
    pub fn open(&self, daemon: bool) -> Result<(Arc<dyn Storage>, Arc<dyn Storage>)> {
        let level = if daemon {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        let raw: Arc<dyn Storage> = Arc::from(storage::open(&self.spec, &self.s3)?);
        let env = std::env::var(storage::crypt::KEY_ENV).ok();
        let keys =
            storage::Keyring::from_options(self.key_file.as_deref(), &self.decryption_files, env)?;
        let data: Arc<dyn Storage> = match keys {
            Some(keys) => {
                log::log!(
                    level,
                    "client-side encryption on: key id {} (new objects)",
                    keys.current_id()
                );
                Arc::new(storage::CryptStorage::new(raw.clone(), keys))
            }
            None => raw.clone(),
        };
        Ok((raw, data))
    }

    /// [`StorageFlags::open`] for a one-shot command that writes no lease:
    /// only the store the pipeline sees.
    pub fn open_data(&self) -> Result<Arc<dyn Storage>> {
        Ok(self.open(false)?.1)
    }
}

/// A subcommand's argument struct with the shared storage flags inserted
/// where its markers stand, in `--help` order:
///
/// - `..location_flags,` (one-shot commands): `--bucket NAME` (required),
///   then the S3 flags with their usual help texts; the struct also gets a
///   `storage()` method returning its [`StorageFlags`].
/// - `..s3_flags("endpoint help", "path-style help"),` (`walsync sync`,
///   whose bucket is optional and may come from its config file): only
///   `--endpoint`, `--region`, `--path-style`, with those help texts.
/// - `..key_flags,` or `..key_flags("help"),`: `--encryption-key-file`
///   (with the usual or the given help text) and `--decryption-key-file`;
///   `..key_flags[hidden_help],` leaves both out of `--help` (the command
///   then names them in a note, to keep its help on one screen).
///
/// A field's type is written as `Name` or `Name<Arg>` (matched as
/// identifiers, not as a `ty`): argh reads the type's tokens to tell a
/// switch from an option, and a `ty` fragment would hide them.
///
/// ```ignore
/// storage_command! {
///     /// List the databases in a bucket.
///     #[derive(FromArgs, Debug)]
///     #[argh(subcommand, name = "list")]
///     pub struct ListArgs {
///         /// database name
///         #[argh(positional)]
///         pub name: Option<String>,
///         ..location_flags,
///         /// print JSON instead of a table
///         #[argh(switch)]
///         pub json: bool,
///         ..key_flags,
///     }
/// }
/// ```
macro_rules! storage_command {
    // The struct as written: its own fields in three runs around the markers.
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $($(#[$a:meta])* pub $af:ident: $at:ident $(<$ag:ident>)?,)*
            ..$location:ident $(($endpoint_doc:tt, $path_style_doc:tt))?,
            $($(#[$b:meta])* pub $bf:ident: $bt:ident $(<$bg:ident>)?,)*
            ..key_flags $(($key_doc:tt))? $([$hide:ident])?,
            $($(#[$c:meta])* pub $cf:ident: $ct:ident $(<$cg:ident>)?,)*
        }
    ) => {
        $crate::cli::storage_command! {
            @build [$(#[$attr])*] $name
            $location [$($endpoint_doc $path_style_doc)?]
            { $($(#[$a])* pub $af: $at $(<$ag>)?,)* }
            { $($(#[$b])* pub $bf: $bt $(<$bg>)?,)* }
            [$($key_doc)?] [$($hide)?]
            { $($(#[$c])* pub $cf: $ct $(<$cg>)?,)* }
        }
    };
    // `..location_flags`: `--bucket`, the usual S3 help texts, `storage()`.
    (@build $attr:tt $name:ident location_flags [] { $($a:tt)* } $($rest:tt)*) => {
        $crate::cli::storage_command! {
            @build $attr $name
            s3_flags [
                "S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, else AWS)"
                "path-style addressing (automatic with a custom endpoint)"
            ]
            {
                $($a)*
                /// bucket name, s3://bucket/prefix or file:///dir
                #[argh(option)]
                pub bucket: String,
            }
            $($rest)*
        }

        impl $name {
            /// The shared storage flags of this command.
            pub fn storage(&self) -> $crate::cli::StorageFlags {
                $crate::cli::StorageFlags::new(
                    self.bucket.clone(),
                    self.endpoint.clone(),
                    self.region.clone(),
                    self.path_style,
                    self.encryption_key_file.clone(),
                    self.decryption_key_file.clone(),
                )
            }
        }
    };
    // `..key_flags,`: the usual help text of `--encryption-key-file`.
    (@build $attr:tt $name:ident s3_flags $docs:tt $a:tt $b:tt [] $hide:tt $c:tt) => {
        $crate::cli::storage_command! {
            @build $attr $name s3_flags $docs $a $b
            ["key file (mode 0600); else $WALSYNC_ENCRYPTION_KEY (hex)"]
            $hide $c
        }
    };
    // Every help text known: the struct itself.
    (
        @build [$($attr:tt)*] $name:ident
        s3_flags [$endpoint_doc:tt $path_style_doc:tt]
        { $($a:tt)* } { $($b:tt)* } [$key_doc:tt] [$($hide:ident)?] { $($c:tt)* }
    ) => {
        $($attr)*
        pub struct $name {
            $($a)*

            #[doc = $endpoint_doc]
            #[argh(option)]
            pub endpoint: Option<String>,

            /// S3 region (default: $AWS_REGION, else us-east-1)
            #[argh(option)]
            pub region: Option<String>,

            #[doc = $path_style_doc]
            #[argh(switch)]
            pub path_style: bool,

            $($b)*

            #[doc = $key_doc]
            #[argh(option $(, $hide)?)]
            pub encryption_key_file: Option<String>,

            /// older key file that only decrypts (rotation); repeatable
            #[argh(option $(, $hide)?)]
            pub decryption_key_file: Vec<String>,

            $($c)*
        }
    };
}
pub(crate) use storage_command;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_style_switch_forces_only_when_given() {
        let f = |on| StorageFlags::new("b".into(), None, None, on, None, vec![]);
        assert_eq!(f(false).s3.path_style, None);
        assert_eq!(f(true).s3.path_style, Some(true));
    }

    #[test]
    fn open_wraps_only_with_a_key() {
        let dir = std::env::temp_dir().join(format!("walsync-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "11".repeat(32)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut flags = StorageFlags {
            spec: format!("file://{}", dir.join("store").display()),
            ..StorageFlags::default()
        };
        // Only when the environment names no key: a key there would wrap both.
        if std::env::var(storage::crypt::KEY_ENV).is_err() {
            let (raw, data) = flags.open(false).unwrap();
            assert_eq!(raw.describe(), data.describe());
            assert!(Arc::ptr_eq(&raw, &data));
        }
        flags.key_file = Some(key.display().to_string());
        let (raw, data) = flags.open(false).unwrap();
        assert!(!Arc::ptr_eq(&raw, &data));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
