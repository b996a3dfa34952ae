"""Key rotation for stored secrets: a deployment (own database) whose webhook key and
remote registry password were written under an old key; with MSR_ENCRYPTION_KEY="new,old"
`msr manage reencrypt` rewrites them under the new key, after which the old key can go.
A secret no configured key reads is named and left alone."""

import os
import subprocess

from cryptography.fernet import Fernet

from tests.deployments import Deployment
from tests.processes import MSR

REDIS = os.environ.get("MSR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def test_reencrypt_moves_every_secret_to_the_newest_key(db_url, tmp_path):
    old, new, lost = (Fernet.generate_key().decode() for _ in range(3))
    base, _, _ = REDIS.rpartition("/")
    deployment = Deployment("reencrypt", tmp_path / "deployment", db_url, f"{base}/15",
                            extra_env={"MSR_ENCRYPTION_KEY": old})
    try:
        deployment.manage("migrate", "--no-input", "-v", "0")
        ids = deployment.shell(
            "from accounts.services import create_organization, create_user\n"
            "from mirroring.models import Policy\n"
            "from msr.crypto import encrypt\n"
            "from msr.models import Repository, Webhook\n"
            "owner = create_user('owner', 'owner-password')\n"
            "org = create_organization('shop', owner=owner)\n"
            "repo = Repository.objects.create(namespace=org, name='app')\n"
            "hook = Webhook.objects.create(event_type='TAG_PUSH', namespace=org, endpoint='http://127.0.0.1:9/',"
            " secret_encrypted=encrypt('hook-secret'))\n"
            "policy = Policy.objects.create(kind='push_mirror', repository=repo, remote_host='https://r.example',"
            " remote_repository='x/app', username='u', secret_encrypted=encrypt('remote-password'))\n"
            "print(hook.pk, policy.pk)").split()

        def run(*args, key):
            return subprocess.run([MSR, "manage", "reencrypt", *args], env={**deployment.env, "MSR_ENCRYPTION_KEY": key},
                                  capture_output=True, text=True, timeout=120)

        read_back = ("from mirroring.models import Policy\nfrom msr.crypto import decrypt\nfrom msr.models import Webhook\n"
                     f"print(decrypt(Webhook.objects.get(pk={ids[0]}).secret_encrypted),"
                     f" decrypt(Policy.objects.get(pk={ids[1]}).secret_encrypted))")
        assert run("--dry-run", key=new).returncode != 0  # the new key alone cannot read them yet

        rotated = run(key=f"{new},{old}")
        assert rotated.returncode == 0, rotated.stderr
        assert "2 secret(s) re-encrypted" in rotated.stdout
        deployment.env["MSR_ENCRYPTION_KEY"] = new  # the old key is gone
        assert deployment.shell(read_back).split() == ["hook-secret", "remote-password"]
        checked = run("--dry-run", key=new)
        assert checked.returncode == 0 and "2 secret(s) readable" in checked.stdout

        # a secret written under a key nobody kept: named, the others untouched
        deployment.env["MSR_ENCRYPTION_KEY"] = lost
        deployment.shell("from msr.crypto import encrypt\nfrom msr.models import Webhook\n"
                         f"Webhook.objects.filter(pk={ids[0]}).update(secret_encrypted=encrypt('orphan'))")
        failed = run(key=new)
        assert failed.returncode != 0 and f"msr.Webhook {ids[0]}" in failed.stderr
        assert "1 secret(s) re-encrypted" in failed.stdout
        deployment.env["MSR_ENCRYPTION_KEY"] = new
        assert deployment.shell(
            "from mirroring.models import Policy\nfrom msr.crypto import decrypt\n"
            f"print(decrypt(Policy.objects.get(pk={ids[1]}).secret_encrypted))").strip() == "remote-password"
    finally:
        deployment.stop()
