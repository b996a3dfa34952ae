"""The session engine of the web UI (SESSION_ENGINE): Django's database sessions, with
the user, address and browser of each session in columns of accounts.UserSession."""

from datetime import datetime

from django.contrib.sessions.backends.db import SessionStore as DBStore

# Keys the sign-in puts into the session (accounts.signals) for the columns below.
CLIENT_IP, USER_AGENT, SIGNED_IN_AT = "msr_client_ip", "msr_user_agent", "msr_signed_in_at"


class SessionStore(DBStore):
    @classmethod
    def get_model_class(cls):
        from accounts.models import UserSession

        return UserSession

    def create_model_instance(self, data):
        instance = super().create_model_instance(data)
        user_id = data.get("_auth_user_id")
        instance.user_id = int(user_id) if user_id else None
        instance.client_ip = data.get(CLIENT_IP) or None
        instance.user_agent = (data.get(USER_AGENT) or "")[:200]
        # Every save writes every column: the sign-in time comes from the data.
        signed_in = data.get(SIGNED_IN_AT)
        instance.created_at = datetime.fromisoformat(signed_in) if signed_in else None
        return instance
