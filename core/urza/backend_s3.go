package urza

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/recovery"
)

// The environment variables that configure a store on S3 (S3ConfigFromEnv).
const (
	// EnvURL selects the default store: an s3://bucket/prefix URL (or a
	// directory) used instead of $ESPER_HOME/urza.
	EnvURL = "ESPER_URZA_URL"
	// EnvS3Endpoint is the S3-compatible service's URL, such as
	// http://127.0.0.1:7070; it wins over AWS_ENDPOINT_URL_S3 and
	// AWS_ENDPOINT_URL. Without any, AWS (s3.amazonaws.com) is used.
	EnvS3Endpoint = "ESPER_S3_ENDPOINT"
)

// S3Config says how to reach a store on an S3-compatible service.
type S3Config struct {
	// URL is the store's s3://bucket/prefix URL, as given.
	URL string
	// Bucket and Prefix are the URL's parts; Prefix is "" or ends in "/".
	Bucket, Prefix string
	// Endpoint is the service's host[:port]; Secure selects https.
	Endpoint string
	Secure   bool
	// Region is the bucket's region (default us-east-1).
	Region string
	// AccessKey, SecretKey and SessionToken are static credentials; when
	// AccessKey is empty, the AWS shared credentials file and then IAM (web
	// identity token, instance metadata) are tried.
	AccessKey, SecretKey, SessionToken string
}

// IsURL reports whether a store root is an s3:// URL rather than a
// directory.
func IsURL(root string) bool { return strings.HasPrefix(root, "s3://") }

// S3ConfigFromEnv parses an s3://bucket/prefix URL and reads the service
// and credentials from getenv: ESPER_S3_ENDPOINT, AWS_ENDPOINT_URL_S3 or
// AWS_ENDPOINT_URL (a URL; http:// for a plain-text service),
// AWS_REGION or AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.
func S3ConfigFromEnv(rawURL string, getenv func(string) string) (S3Config, error) {
	c := S3Config{URL: rawURL}
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "s3" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return c, fmt.Errorf("store URL %q: %w: want s3://bucket or s3://bucket/prefix", rawURL, errcode.ErrInvalid)
	}
	c.Bucket = u.Host
	if p := strings.Trim(u.Path, "/"); p != "" {
		c.Prefix = p + "/"
	}
	endpoint := "https://s3.amazonaws.com"
	for _, name := range []string{EnvS3Endpoint, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"} {
		if v := getenv(name); v != "" {
			endpoint = v
			break
		}
	}
	if !strings.Contains(endpoint, "://") {
		endpoint = "https://" + endpoint
	}
	e, err := url.Parse(endpoint)
	if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" || strings.Trim(e.Path, "/") != "" {
		return c, fmt.Errorf("S3 endpoint %q: %w: want http(s)://host[:port]", endpoint, errcode.ErrInvalid)
	}
	c.Endpoint, c.Secure = e.Host, e.Scheme == "https"
	c.Region = getenv("AWS_REGION")
	if c.Region == "" {
		c.Region = getenv("AWS_DEFAULT_REGION")
	}
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	c.AccessKey, c.SecretKey, c.SessionToken = getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY"), getenv("AWS_SESSION_TOKEN")
	if (c.AccessKey == "") != (c.SecretKey == "") {
		return c, fmt.Errorf("S3 credentials: %w: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither", errcode.ErrInvalid)
	}
	return c, nil
}

// OpenS3 opens (creating the bucket if needed) the store described by cfg.
// opts may be nil; a zero Options.Retry gets S3's default: 6 attempts,
// 100 ms base, 2 s cap.
func OpenS3(cfg S3Config, opts *Options) (*Store, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	return openS3(cfg, o)
}

// openS3 opens the store on S3 with options not yet defaulted.
func openS3(cfg S3Config, o Options) (*Store, error) {
	if r := o.Retry; r.Attempts == 0 && r.Base == 0 && r.Max == 0 && r.Jitter == 0 && r.Rand == nil && r.Classify == nil {
		o.Retry = recovery.Policy{Attempts: 6, Base: 100 * time.Millisecond, Max: 2 * time.Second,
			Jitter: 0.5, Rand: recovery.NewLockedRand(uint64(time.Now().UnixNano()))}
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	br, err := recovery.NewBreakers(o.Breaker)
	if err != nil {
		return nil, fmt.Errorf("urza: options: breaker: %w", err)
	}
	b, err := newS3Backend(cfg)
	if err != nil {
		return nil, fmt.Errorf("urza: open %s: %w", cfg.URL, err)
	}
	if err := recovery.Retry(context.Background(), o.Retry, b.ensureBucket); err != nil {
		return nil, fmt.Errorf("urza: open %s: %w", b.location(), err)
	}
	return open(b, o, br)
}

// s3Backend keeps a store in a bucket under a prefix. A PUT is atomic (the
// object appears whole or not at all), so objects are written in place;
// index rewrites are conditional on the ETag read (If-Match, or
// If-None-Match: * for the first index).
type s3Backend struct {
	cfg    S3Config
	client *minio.Client
}

func newS3Backend(cfg S3Config) (*s3Backend, error) {
	chain := []credentials.Provider{}
	if cfg.AccessKey != "" {
		chain = append(chain, &credentials.Static{Value: credentials.Value{
			AccessKeyID: cfg.AccessKey, SecretAccessKey: cfg.SecretKey, SessionToken: cfg.SessionToken,
			SignerType: credentials.SignatureV4}})
	} else {
		chain = append(chain, &credentials.FileAWSCredentials{}, &credentials.IAM{})
	}
	tr, err := minio.DefaultTransport(cfg.Secure)
	if err != nil {
		return nil, fmt.Errorf("s3 transport: %w", err)
	}
	tr.ResponseHeaderTimeout = time.Minute
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:     credentials.NewChainCredentials(chain),
		Secure:    cfg.Secure,
		Region:    cfg.Region,
		Transport: tr,
		// The store retries with its own backoff (Options.Retry), so a
		// server that is down fails in a bounded, documented time.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", cfg.Endpoint, err)
	}
	return &s3Backend{cfg: cfg, client: client}, nil
}

func (b *s3Backend) location() string {
	return "s3://" + b.cfg.Bucket + "/" + strings.TrimSuffix(b.cfg.Prefix, "/")
}

func (b *s3Backend) url(key string) string { return "s3://" + b.cfg.Bucket + "/" + b.cfg.Prefix + key }

// ensureBucket creates the bucket when it does not exist.
func (b *s3Backend) ensureBucket(ctx context.Context) error {
	ok, err := b.client.BucketExists(ctx, b.cfg.Bucket)
	if err != nil {
		return b.fail("check bucket", "", err)
	}
	if ok {
		return nil
	}
	if err := b.client.MakeBucket(ctx, b.cfg.Bucket, minio.MakeBucketOptions{Region: b.cfg.Region}); err != nil {
		if code := minio.ToErrorResponse(err).Code; code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
			return nil
		}
		return b.fail("create bucket", "", err)
	}
	return nil
}

// fail wraps an S3 error with the operation and the object's URL: a missing
// object wraps fs.ErrNotExist, a failed precondition is errChanged, network
// errors, timeouts, throttling and 5xx answers are transient (retried), and
// every other error is an I/O error.
func (b *s3Backend) fail(op, key string, err error) error {
	resp := minio.ToErrorResponse(err)
	where := b.url(key)
	switch {
	case resp.Code == "NoSuchKey" || (resp.StatusCode == http.StatusNotFound && resp.Code != "NoSuchBucket"):
		return fmt.Errorf("s3 %s %s: %w", op, where, fs.ErrNotExist)
	case resp.Code == "PreconditionFailed" || resp.StatusCode == http.StatusPreconditionFailed ||
		resp.Code == "ConditionalRequestConflict":
		return fmt.Errorf("s3 %s %s: %w", op, where, errChanged)
	}
	wrapped := fmt.Errorf("%w: s3 %s %s: %w", ErrIO, op, where, err)
	if resp.StatusCode == 0 || resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests ||
		resp.Code == "SlowDown" || resp.Code == "RequestTimeout" {
		return recovery.MarkTransient(wrapped)
	}
	return wrapped
}

func (b *s3Backend) read(ctx context.Context, key string, limit int64) ([]byte, object, error) {
	obj, err := b.client.GetObject(ctx, b.cfg.Bucket, b.cfg.Prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, object{}, b.fail("get", key, err)
	}
	defer obj.Close()
	st, err := obj.Stat()
	if err != nil {
		return nil, object{}, b.fail("get", key, err)
	}
	o := b.object(key, st)
	if st.Size > limit {
		return nil, o, nil
	}
	data, err := io.ReadAll(io.LimitReader(obj, limit+1))
	if err != nil {
		return nil, o, b.fail("get", key, err)
	}
	if int64(len(data)) != st.Size {
		return nil, o, recovery.MarkTransient(fmt.Errorf("%w: s3 get %s: read %d bytes of %d", ErrIO, b.url(key), len(data), st.Size))
	}
	return data, o, nil
}

func (b *s3Backend) open(ctx context.Context, key string) (io.ReadCloser, object, error) {
	obj, err := b.client.GetObject(ctx, b.cfg.Bucket, b.cfg.Prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, object{}, b.fail("get", key, err)
	}
	st, err := obj.Stat()
	if err != nil {
		obj.Close()
		return nil, object{}, b.fail("get", key, err)
	}
	return &s3Reader{obj: obj, b: b, key: key}, b.object(key, st), nil
}

// s3Reader names the object's URL in its read errors.
type s3Reader struct {
	obj *minio.Object
	b   *s3Backend
	key string
}

func (r *s3Reader) Read(p []byte) (int, error) {
	n, err := r.obj.Read(p)
	if err != nil && err != io.EOF {
		err = r.b.fail("get", r.key, err)
	}
	return n, err
}

func (r *s3Reader) Close() error { return r.obj.Close() }

func (b *s3Backend) put(ctx context.Context, key string, data []byte, opts minio.PutObjectOptions) (string, error) {
	opts.ContentType = "application/octet-stream"
	if strings.HasSuffix(key, manifestExt) {
		opts.ContentType = "application/json"
	}
	opts.SendContentMd5 = true // the service refuses a body damaged in transit
	info, err := b.client.PutObject(ctx, b.cfg.Bucket, b.cfg.Prefix+key, bytes.NewReader(data), int64(len(data)), opts)
	if err != nil {
		return "", b.fail("put", key, err)
	}
	return strings.Trim(info.ETag, `"`), nil
}

func (b *s3Backend) write(ctx context.Context, key string, data []byte) error {
	_, err := b.put(ctx, key, data, minio.PutObjectOptions{})
	return err
}

// writeIf returns the ETag of the object written (the service's answer to
// this PUT, not a later look-up that another writer could have overtaken).
func (b *s3Backend) writeIf(ctx context.Context, key string, data []byte, prev string) (string, error) {
	// One PUT, never a multipart upload, so that the condition applies to
	// the object as published (an index up to S3's 5 GiB single-PUT limit).
	opts := minio.PutObjectOptions{DisableMultipart: true}
	if prev == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(prev)
	}
	return b.put(ctx, key, data, opts)
}

func (b *s3Backend) stat(ctx context.Context, key string) (object, error) {
	st, err := b.client.StatObject(ctx, b.cfg.Bucket, b.cfg.Prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return object{}, b.fail("stat", key, err)
	}
	return b.object(key, st), nil
}

// remove deletes key; S3 answers a delete of a missing key with success, so
// the key is looked up first.
func (b *s3Backend) remove(ctx context.Context, key string) error {
	if _, err := b.stat(ctx, key); err != nil {
		return err
	}
	if err := b.client.RemoveObject(ctx, b.cfg.Bucket, b.cfg.Prefix+key, minio.RemoveObjectOptions{}); err != nil {
		return b.fail("delete", key, err)
	}
	return nil
}

func (b *s3Backend) list(ctx context.Context, prefix string, recursive bool) ([]object, error) {
	var out []object
	for info := range b.client.ListObjects(ctx, b.cfg.Bucket, minio.ListObjectsOptions{Prefix: b.cfg.Prefix + prefix, Recursive: recursive}) {
		if info.Err != nil {
			if errors.Is(info.Err, context.Canceled) || errors.Is(info.Err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("%w: %w", ErrCancelled, info.Err)
			}
			return nil, b.fail("list", prefix, info.Err)
		}
		key := strings.TrimPrefix(info.Key, b.cfg.Prefix)
		if strings.HasSuffix(key, "/") {
			if !recursive {
				out = append(out, object{Key: key, Dir: true})
			}
			continue
		}
		out = append(out, b.object(key, info))
	}
	return out, nil
}

// lockIndex takes no lock: index rewrites are conditional writes.
func (b *s3Backend) lockIndex() (func(), error) { return func() {}, nil }

func (b *s3Backend) object(key string, st minio.ObjectInfo) object {
	return object{Key: key, Size: st.Size, ModTime: st.LastModified, Tag: strings.Trim(st.ETag, `"`)}
}
