"""/api/v0/repositories: repositories, team access and tags."""


from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import IsAuthenticatedOrReadOnly
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Namespace
from accounts.permissions import ACCESS_LEVELS, DELETE, readable_repositories
from accounts.services import set_team_access
from msr import jsonsafe, manifests, services
from msr.access import (
    is_org_member, is_org_owner, may_create_in, namespace_or_404, organization_or_404,
    repository_for, require_repository_admin, team_access_levels, team_or_404,
)
from msr.events import record
from msr.models import Event, Repository, Tag
from msr.references import is_valid_name
from msr.storage import STORAGE_ERRORS, get_storage

REPOSITORY_NAME = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*"


TAG_PATTERN = r"\A[A-Za-z0-9_.*?\[\]!-]{1,128}\Z"
MAX_TAG_PATTERNS = 50


class TagRulesFields(serializers.Serializer):
    """Immutable tags and the tag limit (see Repository): on creation and in PATCH."""

    immutableTags = serializers.BooleanField(source="immutable_tags", required=False)
    immutableTagPatterns = serializers.ListField(
        source="immutable_tag_patterns", required=False, max_length=MAX_TAG_PATTERNS,
        child=serializers.RegexField(TAG_PATTERN, error_messages={
            "invalid": "A pattern is a tag with * and ? wildcards, e.g. release-*."}))
    tagLimit = serializers.IntegerField(source="tag_limit", required=False, min_value=0, max_value=100_000,
                                        help_text="0: no limit")

    def validate_immutableTagPatterns(self, value):
        return list(dict.fromkeys(value))  # in order, once each


class RepositorySerializer(TagRulesFields, serializers.ModelSerializer):
    namespace = serializers.CharField(source="namespace.name", read_only=True)
    name = serializers.RegexField(REPOSITORY_NAME, max_length=200)
    shortDescription = serializers.CharField(source="short_description", max_length=140, required=False,
                                             allow_blank=True)
    longDescription = serializers.CharField(source="long_description", required=False, allow_blank=True)
    visibility = serializers.ChoiceField(choices=["public", "private"], required=False)
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)

    class Meta:
        model = Repository
        fields = ["id", "namespace", "name", "visibility", "shortDescription", "longDescription", "createdAt",
                  "immutableTags", "immutableTagPatterns", "tagLimit"]


class RepositoryUpdateSerializer(TagRulesFields):
    shortDescription = serializers.CharField(source="short_description", max_length=140, required=False,
                                             allow_blank=True)
    longDescription = serializers.CharField(source="long_description", required=False, allow_blank=True)
    visibility = serializers.ChoiceField(choices=["public", "private"], required=False)


TAG_RULES = ("immutable_tags", "immutable_tag_patterns", "tag_limit")


def record_tag_rules(request, repository: Repository, changed) -> None:
    """An audit event when a change touches the tag rules (in the change's transaction)."""
    if any(field in TAG_RULES for field in changed):
        record(Event.REPOSITORY, request.user.username, repository.full_name, request=request,
               detail={"action": "tag rules", "immutableTags": repository.immutable_tags,
                       "immutableTagPatterns": repository.immutable_tag_patterns,
                       "tagLimit": repository.tag_limit})


def _repositories():
    return Repository.objects.select_related("namespace").order_by("namespace__name", "name")


class RepositoryList(generics.ListAPIView):
    """Repositories the caller may pull, in every namespace."""

    serializer_class = RepositorySerializer
    permission_classes = [IsAuthenticatedOrReadOnly]
    filterset_fields = {"name": ["exact", "startswith", "contains"], "visibility": ["exact"],
                        "namespace__name": ["exact"]}

    def get_queryset(self):
        return readable_repositories(self.request.user, _repositories())


@extend_schema_view(get=extend_schema(operation_id="repositories_namespace_list"))
class NamespaceRepositories(generics.ListCreateAPIView):
    serializer_class = RepositorySerializer
    permission_classes = [IsAuthenticatedOrReadOnly]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Repository.objects.none()
        if not self.request.user.is_authenticated:
            # Anonymous callers get the public repositories, and for a name that is no
            # account the same empty list: a 404 would tell who has an account here.
            return readable_repositories(None, _repositories().filter(namespace__name=self.kwargs["namespace"]))
        namespace = namespace_or_404(self.kwargs["namespace"])
        return readable_repositories(self.request.user, _repositories().filter(namespace=namespace))

    def create(self, request, namespace):
        if not request.user.is_authenticated:
            raise PermissionDenied("Sign in to create repositories.")
        found = namespace_or_404(namespace)
        if not may_create_in(request.user, found):
            raise PermissionDenied(f"You may not create repositories in {namespace!r}.")
        repository = create_repository(request, found, request.data)
        return Response(RepositorySerializer(repository).data, status=status.HTTP_201_CREATED)


def create_repository(request, namespace: Namespace, data) -> Repository:
    """Create a repository from the API's fields (the API and the page's form); the
    caller has checked that the user may create in `namespace`. ValidationError per field."""
    form = RepositorySerializer(data=data)
    form.is_valid(raise_exception=True)
    name = form.validated_data["name"]
    if not is_valid_name(f"{namespace.name}/{name}"):
        raise serializers.ValidationError({"name": ["Not a valid repository name."]})
    if Repository.objects.filter(namespace=namespace, name=name).exists():
        raise serializers.ValidationError({"name": ["A repository with this name exists."]})
    with transaction.atomic():
        repository = form.save(namespace=namespace,
                               visibility=form.validated_data.get("visibility", namespace.default_visibility))
        record(Event.REPOSITORY, request.user.username, repository.full_name,
               detail={"action": "create"}, request=request)
        record_tag_rules(request, repository, form.validated_data)
    return repository


class RepositoryDetail(APIView):
    serializer_class = RepositorySerializer
    permission_classes = [IsAuthenticatedOrReadOnly]

    def get(self, request, namespace, repository):
        return Response(RepositorySerializer(repository_for(request.user, namespace, repository)).data)

    @extend_schema(request=RepositoryUpdateSerializer, responses=RepositorySerializer)
    def patch(self, request, namespace, repository):
        found = repository_for(request.user, namespace, repository)
        require_repository_admin(request.user, found)
        form = RepositoryUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        for field, value in form.validated_data.items():
            setattr(found, field, value)
        with transaction.atomic():
            found.save()
            if "visibility" in form.validated_data:
                record(Event.PERMISSION, request.user.username, found.full_name,
                       detail={"action": "visibility", "visibility": found.visibility}, request=request)
            record_tag_rules(request, found, form.validated_data)
        return Response(RepositorySerializer(found).data)

    def delete(self, request, namespace, repository):
        found = repository_for(request.user, namespace, repository)
        require_repository_admin(request.user, found)
        with transaction.atomic():
            found.delete()
            record(Event.REPOSITORY, request.user.username, f"{namespace}/{repository}",
                   detail={"action": "delete"}, request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamAccessSerializer(serializers.Serializer):
    team = serializers.CharField(source="team.name", read_only=True)
    accessLevel = serializers.ChoiceField(choices=list(ACCESS_LEVELS))


class AccessLevelSerializer(serializers.Serializer):
    accessLevel = serializers.ChoiceField(choices=list(ACCESS_LEVELS))


def _team_access(org: Namespace, obj) -> list[dict]:
    return [{"team": {"name": team.name}, "accessLevel": level} for team, level in team_access_levels(org, obj)]


class _TeamAccessBase(APIView):
    serializer_class = TeamAccessSerializer

    def target(self, request, namespace, repository=None, manage=False):
        """(organization, object) for a repository's or a whole organization's access."""
        if repository is None:
            org = organization_or_404(namespace)
            allowed = is_org_owner(request.user, org) if manage else is_org_member(request.user, org)
            if not allowed:
                raise PermissionDenied("Only organization owners manage organization-wide access.")
            return org, org
        found = repository_for(request.user, namespace, repository)
        require_repository_admin(request.user, found)
        if not found.namespace.is_org:
            raise serializers.ValidationError({"team": ["Only an organization's repositories have team access."]})
        return found.namespace, found

    def list_access(self, request, namespace, repository=None):
        org, obj = self.target(request, namespace, repository)
        return Response(_team_access(org, obj))

    def set_access(self, request, namespace, team, repository=None):
        org, obj = self.target(request, namespace, repository, manage=True)
        found = team_or_404(org, team)
        form = AccessLevelSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        level = form.validated_data["accessLevel"]
        with transaction.atomic():
            set_team_access(found, obj, level)
            record(Event.PERMISSION, request.user.username, getattr(obj, "full_name", ""),
                   detail={"action": "team access", "team": f"{org.name}/{team}", "accessLevel": level,
                           "scope": "repository" if repository else "organization"}, request=request)
        return Response({"team": {"name": found.name}, "accessLevel": level})

    def remove_access(self, request, namespace, team, repository=None):
        org, obj = self.target(request, namespace, repository, manage=True)
        found = team_or_404(org, team)
        with transaction.atomic():
            set_team_access(found, obj, None)
            record(Event.PERMISSION, request.user.username, getattr(obj, "full_name", ""),
                   detail={"action": "team access", "team": f"{org.name}/{team}", "accessLevel": None},
                   request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RepositoryTeamAccessList(_TeamAccessBase):
    @extend_schema(responses=TeamAccessSerializer(many=True))
    def get(self, request, namespace, repository):
        return self.list_access(request, namespace, repository)


class RepositoryTeamAccess(_TeamAccessBase):
    @extend_schema(request=AccessLevelSerializer, responses=TeamAccessSerializer)
    def put(self, request, namespace, repository, team):
        return self.set_access(request, namespace, team, repository)

    def delete(self, request, namespace, repository, team):
        return self.remove_access(request, namespace, team, repository)


class NamespaceTeamAccessList(_TeamAccessBase):
    @extend_schema(responses=TeamAccessSerializer(many=True))
    def get(self, request, namespace):
        return self.list_access(request, namespace)


class NamespaceTeamAccess(_TeamAccessBase):
    @extend_schema(request=AccessLevelSerializer, responses=TeamAccessSerializer)
    def put(self, request, namespace, team):
        return self.set_access(request, namespace, team)

    def delete(self, request, namespace, team):
        return self.remove_access(request, namespace, team)


class PlatformSerializer(serializers.Serializer):
    os = serializers.CharField()
    architecture = serializers.CharField()
    variant = serializers.CharField(required=False)


class TagSerializer(serializers.Serializer):
    name = serializers.CharField()
    digest = serializers.CharField()
    mediaType = serializers.CharField()
    size = serializers.IntegerField()
    platforms = PlatformSerializer(many=True)
    pushedAt = serializers.DateTimeField()
    pushedBy = serializers.CharField(allow_blank=True)
    immutable = serializers.BooleanField(help_text="a tag rule of the repository makes this tag immutable")


def _config_platform(digest: str) -> list[dict]:
    """The platform an image config names (the config is whatever its pusher uploaded:
    anything that is not the expected JSON gives no platform, never an error)."""
    if not isinstance(digest, str) or not digest:
        return []
    try:
        with get_storage().open_blob(digest) as f:
            config = jsonsafe.loads(f.read(1024 * 1024))
    except (*STORAGE_ERRORS, ValueError):
        return []
    if not isinstance(config, dict) or "architecture" not in config:
        return []
    platform = {"os": str(config.get("os", "")), "architecture": str(config["architecture"])}
    if config.get("variant"):
        platform["variant"] = str(config["variant"])
    return [platform]


def _size(descriptor) -> int:
    size = descriptor.get("size", 0) if isinstance(descriptor, dict) else 0
    return size if isinstance(size, int) and not isinstance(size, bool) else 0


def describe_tag(tag: Tag) -> dict:
    manifest = tag.manifest
    try:
        document = jsonsafe.loads(bytes(manifest.content))
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    size, platforms = manifest.size, []
    if manifest.media_type in manifests.INDEX_TYPES:
        children = document.get("manifests")
        for child in children if isinstance(children, list) else []:
            size += _size(child)
            platform = child.get("platform") if isinstance(child, dict) else None
            if isinstance(platform, dict) and platform.get("architecture"):
                platforms.append({k: str(platform[k]) for k in ("os", "architecture", "variant") if k in platform})
    else:
        config = document.get("config") if isinstance(document.get("config"), dict) else {}
        layers = document.get("layers") if isinstance(document.get("layers"), list) else []
        size += _size(config) + sum(_size(layer) for layer in layers)
        platforms = _config_platform(config.get("digest", ""))
    return {
        "name": tag.name, "digest": manifest.digest, "mediaType": manifest.media_type, "size": size,
        "platforms": platforms, "pushedAt": tag.updated_at,
        "pushedBy": tag.pushed_by.username if tag.pushed_by else "",
        "immutable": tag.repository.immutability_rule(tag.name) is not None,
    }


class TagList(APIView):
    serializer_class = TagSerializer
    permission_classes = [IsAuthenticatedOrReadOnly]

    @extend_schema(responses=TagSerializer(many=True),
                   parameters=[OpenApiParameter("name", str, description="tags starting with this")])
    def get(self, request, namespace, repository):
        found = repository_for(request.user, namespace, repository)
        tags = found.tags.select_related("manifest", "pushed_by").order_by("name")
        if request.query_params.get("name"):
            tags = tags.filter(name__startswith=request.query_params["name"])
        return Response(TagSerializer([describe_tag(t) for t in tags[:1000]], many=True).data)


class TagDetail(APIView):
    serializer_class = TagSerializer
    permission_classes = [IsAuthenticatedOrReadOnly]

    def _tag(self, request, namespace, repository, tag, action="pull"):
        found = repository_for(request.user, namespace, repository, action)
        try:
            return found, found.tags.select_related("manifest", "pushed_by").get(name=tag)
        except Tag.DoesNotExist:
            from django.http import Http404

            raise Http404(f"no tag {tag!r}") from None

    def get(self, request, namespace, repository, tag):
        return Response(TagSerializer(describe_tag(self._tag(request, namespace, repository, tag)[1])).data)

    def delete(self, request, namespace, repository, tag):
        found, _ = self._tag(request, namespace, repository, tag, DELETE)
        services.delete_manifest(found.full_name, tag, request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
